/*
 * bench_submit.c: submit latency through the C API (2 KiB text message), the C half of
 * bench/c/run; qmail-ffi/examples/bench_submit.rs is the Rust half, with the same CLI.
 *
 *   bench_submit SPOOL durable|nondurable submit|compose N OUT
 *
 * submit:  one composed message, N times qmail_submit (builds and spools);
 * compose: N times new + setters + qmail_submit + free.
 * The spool is the default spool (qmail_set_default_spool_with). Writes N latencies in
 * nanoseconds to OUT, one per line.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <qmail.h>

#define FROM "Shop <noreply@example.com>"
#define TO "Customer <customer@example.org>"
#define SUBJECT "Your order 42 has shipped"

static char text[2049];

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(qmail_result r, const char *what) {
    char msg[512];
    qmail_last_error_message(msg, sizeof msg);
    fprintf(stderr, "bench_submit: %s: %s: %s\n", what, qmail_result_name(r), msg);
    exit(1);
}

static qmail_message *compose(void) {
    qmail_message *m = qmail_message_new();
    qmail_result r;
    if ((r = qmail_message_set_from(m, FROM)) || (r = qmail_message_add_to(m, TO)) ||
        (r = qmail_message_set_subject(m, SUBJECT)) || (r = qmail_message_set_text(m, text)))
        die(r, "compose");
    return m;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: bench_submit SPOOL durable|nondurable submit|compose N OUT\n");
        return 2;
    }
    const char *line = "The quick brown fox jumps over the lazy dog, 0123456789 and back again.\n";
    size_t ll = strlen(line);
    for (size_t i = 0; i < 2048; i++) text[i] = line[i % ll];
    text[2048] = '\0';
    int durable = strcmp(argv[2], "durable") == 0;
    int composing = strcmp(argv[3], "compose") == 0;
    long n = atol(argv[4]);
    long long *ns = malloc(sizeof *ns * (size_t)(n > 0 ? n : 1));
    qmail_result r = qmail_set_default_spool_with(argv[1], durable, 0600);
    if (r) die(r, "spool");

    char id[QMAIL_ID_BUF_LEN];
    qmail_message *m = composing ? NULL : compose();
    for (long i = 0; i < n; i++) {
        long long t0 = now_ns();
        if (composing) {
            qmail_message *c = compose();
            r = qmail_submit(c, id, sizeof id);
            qmail_message_free(c);
        } else {
            r = qmail_submit(m, id, sizeof id);
        }
        ns[i] = now_ns() - t0;
        if (r) die(r, "submit");
    }
    qmail_message_free(m);

    FILE *out = fopen(argv[5], "w");
    if (!out) return 1;
    for (long i = 0; i < n; i++) fprintf(out, "%lld\n", ns[i]);
    fclose(out);
    free(ns);
    return 0;
}
