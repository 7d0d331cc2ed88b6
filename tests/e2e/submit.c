/*
 * submit.c: the C initiator of the end-to-end test (tests/e2e/run.py starts it).
 *
 *   submit HOST COUNT PHASE1 WORKDIR SPOOL_A SPOOL_B
 *
 * Submits COUNT messages through libqmail into the default spools (QMAIL_SPOOL=A:B, spread
 * round-robin by the core); every 10th message names its spool explicitly instead. After
 * PHASE1 messages it writes WORKDIR/gate/c-HOST.waiting and waits (bounded) for WORKDIR/gate/go.
 * Every third message has one or two attachments of random bytes (1 KiB .. 200 KiB), one read
 * from a file (qmail_attach) and one from memory (qmail_attach_bytes); the bytes are also left
 * in WORKDIR/att/ so the harness can hash what was submitted. One JSON line per message goes
 * to WORKDIR/manifest/c-HOST.jsonl, written after the submit returned.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <qmail.h>

static const char *host;

static void die(qmail_result r, const char *what, const char *id) {
    char msg[512];
    qmail_last_error_message(msg, sizeof msg);
    fprintf(stderr, "submit.c %s: %s: %s: %s (%s)\n", host, id, what, msg, qmail_result_name(r));
    exit(1);
}

#define CHECK(call, what, id) do { qmail_result r_ = (call); if (r_ != QMAIL_RESULT_OK) die(r_, what, id); } while (0)

static unsigned long long rng_state = 88172645463325252ULL;
static unsigned long long rnd(void) { /* xorshift64: sizes and choices, not the bytes */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t att_size(void) {
    /* mostly small, some up to 200 KiB */
    return (rnd() % 4 == 0) ? 1024 + rnd() % (200 * 1024) : 1024 + rnd() % (24 * 1024);
}

static void random_bytes(unsigned char *buf, size_t n) {
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(buf, 1, n, f) != n) { perror("urandom"); exit(1); }
    fclose(f);
}

static void write_file(const char *path, const unsigned char *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0) { perror(path); exit(1); }
}

static void wait_go(const char *workdir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/gate/c-%s.waiting", workdir, host);
    write_file(path, (const unsigned char *)"", 0);
    snprintf(path, sizeof path, "%s/gate/go", workdir);
    for (int i = 0; i < 6000; i++) { /* 10 minutes at most */
        if (access(path, F_OK) == 0) return;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "submit.c %s: no go after 10 minutes\n", host);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: submit HOST COUNT PHASE1 WORKDIR SPOOL_A SPOOL_B\n");
        return 2;
    }
    host = argv[1];
    int count = atoi(argv[2]), phase1 = atoi(argv[3]);
    const char *workdir = argv[4];
    const char *spools[2] = {argv[5], argv[6]};
    for (const char *p = host; *p; p++) rng_state = rng_state * 31 + (unsigned char)*p;

    char path[4096];
    snprintf(path, sizeof path, "%s/manifest/c-%s.jsonl", workdir, host);
    FILE *manifest = fopen(path, "w");
    if (!manifest) { perror(path); return 1; }
    unsigned char *buf = malloc(201 * 1024);
    if (!buf) return 1;

    for (int i = 0; i < count; i++) {
        if (i == phase1) wait_go(workdir);
        char id[64], from[128], to[2][64], cc[64], bcc[64], subject[256], text[512], mid[128];
        snprintf(id, sizeof id, "%s-c-%04d", host, i);
        snprintf(from, sizeof from, "shop-c@%s.example.com", host);
        snprintf(to[0], sizeof to[0], "c%d@example.org", i);
        snprintf(to[1], sizeof to[1], "c%d.b@example.net", i);
        snprintf(cc, sizeof cc, "cc-c%d@example.org", i);
        snprintf(bcc, sizeof bcc, "audit-c%d@example.com", i);
        int nto = (i % 4 == 3) ? 2 : 1, has_cc = i % 3 == 1, has_bcc = i % 5 == 2;
        if (i % 4 == 0)
            snprintf(subject, sizeof subject, "Commande n\xc2\xb0 %s \xe2\x80\x93 caf\xc3\xa9 \xe2\x98\x95", id);
        else
            snprintf(subject, sizeof subject, "Order %s from the C shop", id);
        snprintf(text, sizeof text, "Hello,\nE2E-MARKER %s\n.a line that starts with a dot\n..two dots\n.\nend\n", id);
        snprintf(mid, sizeof mid, "<%s@e2e.qmail.test>", id);

        qmail_message *m = qmail_message_new();
        if (!m) return 1;
        CHECK(qmail_message_set_from_with_name(m, "C Shop", from), "from", id);
        CHECK(qmail_message_add_to_with_name(m, "Customer, Dear", to[0]), "to", id);
        if (nto == 2) CHECK(qmail_message_add_to(m, to[1]), "to", id);
        if (has_cc) CHECK(qmail_message_add_cc_with_name(m, "Accounts \xc3\x89lodie", cc), "cc", id);
        if (has_bcc) CHECK(qmail_message_add_bcc(m, bcc), "bcc", id);
        CHECK(qmail_message_set_subject(m, subject), "subject", id);
        CHECK(qmail_message_set_text(m, text), "text", id);
        if (i % 2 == 1) CHECK(qmail_message_set_html(m, "<p>Hello from <b>C</b></p>"), "html", id);
        CHECK(qmail_message_add_header(m, "X-E2E-Id", id), "header", id);
        CHECK(qmail_message_add_header(m, "X-E2E-Host", host), "header", id);
        if (i % 2 == 0) CHECK(qmail_message_add_header(m, "Message-ID", mid), "message-id", id);
        const char *spool = NULL;
        if (i % 10 == 5) {
            spool = spools[(i / 10) % 2];
            CHECK(qmail_message_set_spool(m, spool), "spool", id);
        }

        char atts[1024] = "";
        if (i % 3 == 0) {
            int natt = (i % 2 == 0) ? 2 : 1;
            size_t used = 0;
            for (int k = 0; k < natt; k++) {
                size_t n = att_size();
                random_bytes(buf, n);
                char apath[4096], fname[96];
                snprintf(apath, sizeof apath, "%s/att/%s-%d.bin", workdir, id, k);
                snprintf(fname, sizeof fname, "c-%s-%d.%s", id, k, k == 0 ? "pdf" : "bin");
                write_file(apath, buf, n);
                if (k == 0)
                    CHECK(qmail_attach(m, apath, fname, "application/pdf"), "attach", id);
                else
                    CHECK(qmail_attach_bytes(m, buf, n, fname, NULL), "attach_bytes", id);
                used += (size_t)snprintf(atts + used, sizeof atts - used,
                    "%s{\"filename\":\"%s\",\"content_type\":\"%s\",\"path\":\"%s\",\"size\":%zu}",
                    k ? "," : "", fname, k == 0 ? "application/pdf" : "application/octet-stream", apath, n);
            }
        }

        char qid[QMAIL_ID_BUF_LEN];
        CHECK(qmail_submit(m, qid, sizeof qid), "submit", id);
        qmail_message_free(m);

        /* the manifest: all strings here are JSON-safe (no quote, backslash or control) */
        fprintf(manifest, "{\"id\":\"%s\",\"qid\":\"%s\",\"host\":\"%s\",\"lang\":\"c\",\"api\":\"libqmail\","
                "\"from\":[\"C Shop\",\"%s\"],\"to\":[[\"Customer, Dear\",\"%s\"]",
                id, qid, host, from, to[0]);
        if (nto == 2) fprintf(manifest, ",[\"\",\"%s\"]", to[1]);
        fprintf(manifest, "],\"cc\":[");
        if (has_cc) fprintf(manifest, "[\"Accounts \xc3\x89lodie\",\"%s\"]", cc);
        fprintf(manifest, "],\"bcc\":[");
        if (has_bcc) fprintf(manifest, "\"%s\"", bcc);
        fprintf(manifest, "],\"subject\":\"%s\",\"message_id\":", subject);
        if (i % 2 == 0) fprintf(manifest, "\"%s\"", mid); else fprintf(manifest, "null");
        fprintf(manifest, ",\"spool\":");
        if (spool) fprintf(manifest, "\"%s\"", spool); else fprintf(manifest, "null");
        fprintf(manifest, ",\"attachments\":[%s]}\n", atts);
        fflush(manifest);
    }
    if (phase1 >= count) wait_go(workdir);
    fclose(manifest);
    free(buf);
    return 0;
}
