/*
 * shapes.c: builds and submits a message of every shape through the C API.
 *
 *   shapes SPOOL WORKDIR
 *
 * Each submit prints "SHAPE <name> <queue id>" on stdout; the driver
 * (qmail-ffi/tests/c_programs.rs) then reads each spool file back through qmail-core and an
 * independent MIME parser and checks it. Attachment files are made in WORKDIR.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <time.h>

#include "qtest.h"

static const char *spool;
static char workdir[512];

/* A new message with From, one To and the spool set. */
static qmail_message *base(const char *subject) {
    qmail_message *m = qmail_message_new();
    CHECK(m != NULL);
    CHECK_OK(qmail_message_set_spool(m, spool));
    CHECK_OK(qmail_message_set_from(m, "Shop <noreply@example.com>"));
    CHECK_OK(qmail_message_add_to(m, "Customer <customer@example.org>"));
    CHECK_OK(qmail_message_set_subject(m, subject));
    return m;
}

static void submit(qmail_message *m, const char *shape) {
    char id[QMAIL_ID_BUF_LEN];
    memset(id, 'x', sizeof id);
    qmail_result r = qmail_submit(m, id, sizeof id);
    if (r != QMAIL_RESULT_OK) {
        fprintf(stderr, "submit %s: %s: %s\n", shape, qmail_result_name(r), qtest_last_error());
        qtest_failures++;
        return;
    }
    CHECK(strlen(id) > 0 && strlen(id) <= QMAIL_ID_MAX);
    CHECK(qmail_last_error_result() == QMAIL_RESULT_OK);
    printf("SHAPE %s %s\n", shape, id);
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    CHECK(fwrite(data, 1, len, f) == len);
    fclose(f);
}

static void path_in_workdir(char *out, size_t len, const char *name) {
    snprintf(out, len, "%s/%s", workdir, name);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: shapes SPOOL WORKDIR\n");
        return 2;
    }
    spool = argv[1];
    snprintf(workdir, sizeof workdir, "%s", argv[2]);

    /* minimal: From, To, Subject, text */
    qmail_message *m = base("Your order");
    CHECK_OK(qmail_message_set_text(m, "Thanks!\nLine two.\n"));
    submit(m, "minimal");
    qmail_message_free(m);

    /* alternative: text and html */
    m = base("Report");
    CHECK_OK(qmail_message_set_text(m, "Job 42 finished."));
    CHECK_OK(qmail_message_set_html(m, "<p>Job <b>42</b> finished.</p>"));
    submit(m, "alternative");
    qmail_message_free(m);

    /* html_only */
    m = base("Report");
    CHECK_OK(qmail_message_set_html(m, "<html><body><p>Job <b>42</b> finished.</p></body></html>"));
    submit(m, "html_only");
    qmail_message_free(m);

    /* addresses: every address field; Bcc only in the envelope */
    m = qmail_message_new();
    CHECK_OK(qmail_message_set_spool(m, spool));
    CHECK_OK(qmail_message_set_from(m, "\"Dupont, Élodie\" <elodie@example.com>"));
    CHECK_OK(qmail_message_set_sender(m, "robot@example.com"));
    CHECK_OK(qmail_message_add_reply_to(m, "Support <help@example.com>"));
    CHECK_OK(qmail_message_add_reply_to(m, "<sales@example.com>"));
    CHECK_OK(qmail_message_add_to(m, "a@example.org"));
    CHECK_OK(qmail_message_add_to(m, "B Person <b@example.org>"));
    CHECK_OK(qmail_message_add_cc(m, "c@example.org"));
    CHECK_OK(qmail_message_add_bcc(m, "hidden@example.net"));
    CHECK_OK(qmail_message_set_subject(m, "addresses"));
    CHECK_OK(qmail_message_set_text(m, "x"));
    submit(m, "addresses");
    qmail_message_free(m);

    /* named: display names given apart (no quoting), read receipt */
    m = qmail_message_new();
    CHECK_OK(qmail_message_set_spool(m, spool));
    CHECK_OK(qmail_message_set_from_with_name(m, "Dupont, Élodie", "elodie@example.com"));
    CHECK_OK(qmail_message_set_sender_with_name(m, NULL, "robot@example.com"));
    CHECK_OK(qmail_message_add_reply_to_with_name(m, "Support \"24/7\"", "help@example.com"));
    CHECK_OK(qmail_message_add_to_with_name(m, "Şmith, John", "smith@example.org"));
    CHECK_OK(qmail_message_add_cc_with_name(m, "", "plain@example.org"));
    CHECK_OK(qmail_message_add_bcc_with_name(m, "Hidden Person", "hidden@example.net"));
    CHECK_OK(qmail_message_set_read_receipt_to(m, "receipts@example.com"));
    CHECK_OK(qmail_message_set_subject(m, "named"));
    CHECK_OK(qmail_message_set_text(m, "x"));
    submit(m, "named");
    qmail_message_free(m);

    /* headers_priority: custom headers, own Message-ID and Date, priority */
    m = base("headers");
    CHECK_OK(qmail_message_add_header(m, "X-Campaign", "spring"));
    CHECK_OK(qmail_message_add_header(m, "Message-ID", "<fixed-1@example.com>"));
    CHECK_OK(qmail_message_add_header(m, "Date", "Tue, 01 Jul 2025 10:00:00 +0000"));
    CHECK_OK(qmail_message_set_priority(m, QMAIL_PRIORITY_HIGHEST));
    CHECK_OK(qmail_message_set_text(m, "x"));
    submit(m, "headers_priority");
    qmail_message_free(m);

    /* null_sender: MAIL FROM:<>, RCPT TO given apart from the headers */
    m = base("bounce-less");
    CHECK_OK(qmail_message_set_envelope_from(m, "<>"));
    CHECK_OK(qmail_message_add_envelope_to(m, "<list@example.net>"));
    CHECK_OK(qmail_message_add_envelope_to(m, "other@example.net"));
    CHECK_OK(qmail_message_add_envelope_to(m, "LIST@example.net"));
    CHECK_OK(qmail_message_set_text(m, "x"));
    submit(m, "null_sender");
    qmail_message_free(m);

    /* scheduled: not before an hour from now */
    m = base("later");
    CHECK_OK(qmail_message_set_not_before(m, (int64_t)time(NULL) + 3600));
    CHECK_OK(qmail_message_set_text(m, "x"));
    submit(m, "scheduled");
    qmail_message_free(m);

    /* attachments: from files (name from the path, or given) and from memory */
    char pdf[600], notes[600];
    path_in_workdir(pdf, sizeof pdf, "invoice.pdf");
    path_in_workdir(notes, sizeof notes, "notes.dat");
    write_file(pdf, "%PDF-1.4\n", 9);
    write_file(notes, "hello notes", 11);
    static const uint8_t binary[] = {0x00, 0x01, 0xff, 0x00, 'Q', '\r', '\n', 0x80};
    m = base("files");
    CHECK_OK(qmail_message_set_text(m, "see attached"));
    CHECK_OK(qmail_attach(m, pdf, NULL, NULL));
    CHECK_OK(qmail_attach(m, notes, "Töööst.txt", "text/plain"));
    CHECK_OK(qmail_attach_bytes(m, binary, sizeof binary, "data.bin", NULL));
    CHECK_OK(qmail_attach_bytes(m, NULL, 0, "empty.txt", "text/plain"));
    submit(m, "attachments");
    qmail_message_free(m);

    /* inline: HTML with cid: images from a file and from memory */
    char logo[600];
    path_in_workdir(logo, sizeof logo, "logo.png");
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    write_file(logo, png, sizeof png);
    m = base("inline");
    CHECK_OK(qmail_message_set_html(
        m, "<p><img src=\"cid:logo@example.com\"> <img src=\"cid:sig\"></p>"));
    CHECK_OK(qmail_message_set_text(m, "logo"));
    CHECK_OK(qmail_attach_inline(m, logo, "logo@example.com", NULL));
    CHECK_OK(qmail_attach_inline_bytes(m, png, sizeof png, "sig", "image/png"));
    submit(m, "inline");
    qmail_message_free(m);

    /* unicode: non-ASCII subject and body, IDN domain */
    m = base("Grüße aus Köln – 東京");
    CHECK_OK(qmail_message_add_cc(m, "Jürgen <jurgen@bücher.example>"));
    CHECK_OK(qmail_message_set_text(m, "Grüße, €100"));
    submit(m, "unicode");
    qmail_message_free(m);

    /* long_text: a 2000-octet line and a 2 KiB body */
    {
        static char text[4100];
        memset(text, 'b', 2000);
        text[2000] = '\n';
        memset(text + 2001, 'c', 2048);
        text[4049] = '\0';
        m = base("long line");
        CHECK_OK(qmail_message_set_text(m, text));
        submit(m, "long_text");
        qmail_message_free(m);
    }

    /* resubmit: one handle, two messages with different Message-IDs */
    m = base("twice");
    CHECK_OK(qmail_message_set_text(m, "x"));
    submit(m, "resubmit_1");
    submit(m, "resubmit_2");
    qmail_message_free(m);

    /* default_spool: no spool on the message */
    CHECK_OK(qmail_set_default_spool(spool));
    m = qmail_message_new();
    CHECK_OK(qmail_message_set_from(m, "noreply@example.com"));
    CHECK_OK(qmail_message_add_bcc(m, "only-bcc@example.org"));
    CHECK_OK(qmail_message_set_text(m, "no spool named"));
    submit(m, "default_spool");

    /* no id wanted: NULL, 0 */
    CHECK_OK(qmail_submit(m, NULL, 0));
    printf("NOID default_spool\n");
    qmail_message_free(m);

    qmail_message_free(NULL);
    CHECK(strcmp(qmail_version(), "") != 0);
    printf("VERSION %s\n", qmail_version());
    return qtest_done("shapes");
}
