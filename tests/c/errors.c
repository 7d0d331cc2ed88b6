/*
 * errors.c: every error path of the C API returns the right qmail_result, names the right
 * field and says something useful, and leaves nothing in the spool.
 *
 *   errors WORKDIR
 *
 * Failed submits target WORKDIR/spool, which the driver checks is empty afterwards. One
 * message is submitted on purpose, to WORKDIR/ok, after a failed setter: it is printed as
 * "SHAPE unchanged_after_error <id>" and the driver checks the failed call changed nothing.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qtest.h"

static char workdir[512], spool[600], ok_spool[600], blocker[600], under_blocker[700], file[600], gone[600];

/* A message that would submit fine to WORKDIR/spool. */
static qmail_message *valid(void) {
    qmail_message *m = qmail_message_new();
    CHECK_OK(qmail_message_set_spool(m, spool));
    CHECK_OK(qmail_message_set_from(m, "noreply@example.com"));
    CHECK_OK(qmail_message_add_to(m, "customer@example.org"));
    CHECK_OK(qmail_message_set_text(m, "x"));
    return m;
}

static void null_parameters(void) {
    qmail_message *m = valid();
    char id[QMAIL_ID_BUF_LEN];
    uint8_t byte = 0;

    CHECK_ERR(qmail_message_set_from(NULL, "a@example.com"), QMAIL_RESULT_NULL_PARAMETER, "msg", "must not be NULL");
    CHECK_ERR(qmail_message_set_sender(NULL, "a@example.com"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_add_reply_to(NULL, "a@example.com"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_add_to(NULL, "a@example.com"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_add_cc(NULL, "a@example.com"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_add_bcc(NULL, "a@example.com"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_set_subject(NULL, "s"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_set_text(NULL, "t"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_set_html(NULL, "h"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_add_header(NULL, "X-A", "v"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_set_priority(NULL, 1), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_set_envelope_from(NULL, "<>"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_set_not_before(NULL, 0), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_set_spool(NULL, spool), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_attach(NULL, file, NULL, NULL), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_attach_bytes(NULL, &byte, 1, NULL, NULL), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_attach_inline(NULL, file, "cid", NULL), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_attach_inline_bytes(NULL, &byte, 1, "cid", NULL), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_submit(NULL, id, sizeof id), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);

    CHECK_ERR(qmail_message_set_from(m, NULL), QMAIL_RESULT_NULL_PARAMETER, "address", NULL);
    CHECK_ERR(qmail_message_add_to(m, NULL), QMAIL_RESULT_NULL_PARAMETER, "address", NULL);
    CHECK_ERR(qmail_message_set_subject(m, NULL), QMAIL_RESULT_NULL_PARAMETER, "subject", NULL);
    CHECK_ERR(qmail_message_set_text(m, NULL), QMAIL_RESULT_NULL_PARAMETER, "text", NULL);
    CHECK_ERR(qmail_message_set_html(m, NULL), QMAIL_RESULT_NULL_PARAMETER, "html", NULL);
    CHECK_ERR(qmail_message_add_header(m, NULL, "v"), QMAIL_RESULT_NULL_PARAMETER, "name", NULL);
    CHECK_ERR(qmail_message_add_header(m, "X-A", NULL), QMAIL_RESULT_NULL_PARAMETER, "value", NULL);
    CHECK_ERR(qmail_message_set_spool(m, NULL), QMAIL_RESULT_NULL_PARAMETER, "path", NULL);
    CHECK_ERR(qmail_attach(m, NULL, NULL, NULL), QMAIL_RESULT_NULL_PARAMETER, "path", NULL);
    CHECK_ERR(qmail_attach_bytes(m, NULL, 3, "a.bin", NULL), QMAIL_RESULT_NULL_PARAMETER, "data", NULL);
    CHECK_ERR(qmail_attach_inline(m, file, NULL, NULL), QMAIL_RESULT_NULL_PARAMETER, "content_id", NULL);
    CHECK_ERR(qmail_submit(m, NULL, sizeof id), QMAIL_RESULT_NULL_PARAMETER, "id_buf", NULL);
    CHECK_ERR(qmail_set_default_spool(NULL), QMAIL_RESULT_NULL_PARAMETER, "spools", NULL);
    CHECK_ERR(qmail_set_default_spool_with(NULL, true, 0600), QMAIL_RESULT_NULL_PARAMETER, "spools", NULL);
    qmail_message_free(m);
}

static void invalid_utf8(void) {
    qmail_message *m = valid();
    CHECK_ERR(qmail_message_set_subject(m, "Invoice \xff"), QMAIL_RESULT_INVALID_UTF8, "subject", "offset 8");
    CHECK_ERR(qmail_message_add_to(m, "\xc3(@example.org"), QMAIL_RESULT_INVALID_UTF8, "address", "not valid UTF-8");
    CHECK_ERR(qmail_message_set_text(m, "\xed\xa0\x80"), QMAIL_RESULT_INVALID_UTF8, "text", NULL);
    CHECK_ERR(qmail_message_add_header(m, "X-A", "\xfe"), QMAIL_RESULT_INVALID_UTF8, "value", NULL);
    CHECK_ERR(qmail_attach(m, file, "\xff.txt", NULL), QMAIL_RESULT_INVALID_UTF8, "filename", NULL);
    qmail_message_free(m);
}

static void bad_addresses(void) {
    qmail_message *m = valid();
    CHECK_ERR(qmail_message_add_to(m, "not an address"), QMAIL_RESULT_INVALID_ADDRESS, "to", NULL);
    CHECK_ERR(qmail_message_add_to(m, "customer@example.org\r\nBcc: leak@example.org"), QMAIL_RESULT_INVALID_ADDRESS, "to", "'\\r'");
    CHECK_ERR(qmail_message_set_from(m, "Shop <noreply@example.com"), QMAIL_RESULT_INVALID_ADDRESS, "from", NULL);
    CHECK_ERR(qmail_message_set_sender(m, "@example.com"), QMAIL_RESULT_INVALID_ADDRESS, "sender", NULL);
    CHECK_ERR(qmail_message_add_reply_to(m, "Support <help@example.com\nBcc: x@example.org>"), QMAIL_RESULT_INVALID_ADDRESS, "reply_to", NULL);
    CHECK_ERR(qmail_message_add_cc(m, "a@@example.org"), QMAIL_RESULT_INVALID_ADDRESS, "cc", NULL);
    CHECK_ERR(qmail_message_add_bcc(m, ""), QMAIL_RESULT_INVALID_ADDRESS, "bcc", NULL);
    CHECK_ERR(qmail_message_set_envelope_from(m, "bounce@example.com>\r\nRCPT TO:<leak@example.org"), QMAIL_RESULT_INVALID_ADDRESS, "envelope_from", NULL);
    CHECK_ERR(qmail_message_add_envelope_to(m, "x@example.org>\r\nDATA"), QMAIL_RESULT_INVALID_ADDRESS, "envelope_to", NULL);
    CHECK_ERR(qmail_message_add_envelope_to(m, NULL), QMAIL_RESULT_NULL_PARAMETER, "address", NULL);
    CHECK_ERR(qmail_message_add_envelope_to(NULL, "x@example.org"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_set_from(m, "Dupont, Elodie <e@example.com>"), QMAIL_RESULT_INVALID_ADDRESS, "from", "quote it");
    /* display name and address apart */
    CHECK_ERR(qmail_message_set_from_with_name(NULL, "N", "a@example.com"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    CHECK_ERR(qmail_message_add_to_with_name(m, "N", NULL), QMAIL_RESULT_NULL_PARAMETER, "address", NULL);
    CHECK_ERR(qmail_message_add_to_with_name(m, "\xff", "a@example.com"), QMAIL_RESULT_INVALID_UTF8, "name", NULL);
    CHECK_ERR(qmail_message_add_reply_to_with_name(m, "Support\r\nBcc: leak@example.org", "help@example.com"), QMAIL_RESULT_INVALID_HEADER, "reply_to", NULL);
    CHECK_ERR(qmail_message_add_cc_with_name(m, "Name", "<c@example.org>"), QMAIL_RESULT_INVALID_ADDRESS, "cc", NULL);
    CHECK_ERR(qmail_message_add_bcc_with_name(m, NULL, "help@example.com\r\nBcc: x@example.org"), QMAIL_RESULT_INVALID_ADDRESS, "bcc", NULL);
    CHECK_ERR(qmail_message_set_sender_with_name(m, "S", "nope"), QMAIL_RESULT_INVALID_ADDRESS, "sender", NULL);
    CHECK_ERR(qmail_message_set_read_receipt_to(m, "r@@example.com"), QMAIL_RESULT_INVALID_ADDRESS, "read_receipt_to", NULL);
    CHECK_ERR(qmail_message_set_read_receipt_to(NULL, "r@example.com"), QMAIL_RESULT_NULL_PARAMETER, "msg", NULL);
    qmail_message_free(m);
}

static void bad_headers(void) {
    qmail_message *m = valid();
    CHECK_ERR(qmail_message_set_subject(m, "Invoice 42\n"), QMAIL_RESULT_INVALID_HEADER, "subject", "LF");
    CHECK_ERR(qmail_message_set_subject(m, "a\rb"), QMAIL_RESULT_INVALID_HEADER, "subject", "CR");
    CHECK_ERR(qmail_message_add_header(m, "X-Campaign", "spring\r\n"), QMAIL_RESULT_INVALID_HEADER, "headers.X-Campaign", "CR");
    CHECK_ERR(qmail_message_add_header(m, "X-Bad Name", "v"), QMAIL_RESULT_INVALID_HEADER, "headers.X-Bad Name", "RFC 5322");
    CHECK_ERR(qmail_message_add_header(m, "X-Evil:\r\nBcc", "v"), QMAIL_RESULT_INVALID_HEADER, "headers.X-Evil:\\r\\nBcc", NULL);
    CHECK_ERR(qmail_message_add_header(m, "", "v"), QMAIL_RESULT_INVALID_HEADER, "headers.", "empty");
    CHECK_ERR(qmail_message_add_header(m, "Bcc", "leak@example.org"), QMAIL_RESULT_INVALID_HEADER, "headers.Bcc", NULL);
    CHECK_ERR(qmail_message_add_header(m, "Message-ID", "no-brackets"), QMAIL_RESULT_INVALID_HEADER, "headers.Message-ID", NULL);
    CHECK_ERR(qmail_attach_inline_bytes(m, (const uint8_t *)"x", 1, "a b", NULL), QMAIL_RESULT_INVALID_HEADER, "inline[0]", "Content-ID");
    qmail_message_free(m);
}

static void bad_arguments(void) {
    qmail_message *m = valid();
    CHECK_ERR(qmail_message_set_priority(m, 0), QMAIL_RESULT_INVALID_ARGUMENT, "priority", NULL);
    CHECK_ERR(qmail_message_set_priority(m, 6), QMAIL_RESULT_INVALID_ARGUMENT, "priority", NULL);
    CHECK_ERR(qmail_message_set_not_before(m, -1), QMAIL_RESULT_INVALID_ARGUMENT, "not_before", NULL);
    CHECK_ERR(qmail_message_set_spool(m, ""), QMAIL_RESULT_INVALID_ARGUMENT, "spool", NULL);
    CHECK_ERR(qmail_attach(m, file, NULL, "pdf"), QMAIL_RESULT_INVALID_ARGUMENT, "attachments[0]", "RFC 2045");
    CHECK_ERR(qmail_attach_bytes(m, (const uint8_t *)"x", 1, "bad\tname", NULL), QMAIL_RESULT_INVALID_ARGUMENT, "attachments[0]", NULL);
    qmail_message_free(m);
}

static void attachments(void) {
    qmail_message *m = valid();
    char id[QMAIL_ID_BUF_LEN];
    CHECK_ERR(qmail_attach(m, "/nonexistent/qmail/invoice.pdf", NULL, NULL), QMAIL_RESULT_ATTACHMENT, "attachments[0]", "/nonexistent/qmail/invoice.pdf");
    CHECK_ERR(qmail_attach(m, workdir, NULL, NULL), QMAIL_RESULT_ATTACHMENT, "attachments[0]", "not a regular file");
    CHECK_ERR(qmail_attach_inline(m, "/nonexistent/logo.png", "logo", NULL), QMAIL_RESULT_ATTACHMENT, "inline[0]", NULL);
    CHECK_OK(qmail_attach(m, file, NULL, NULL));
    CHECK_ERR(qmail_attach(m, "/nonexistent/b.pdf", NULL, NULL), QMAIL_RESULT_ATTACHMENT, "attachments[1]", NULL);

    /* a file that disappears between qmail_attach() and qmail_submit() */
    FILE *f = fopen(gone, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("soon gone", f);
        fclose(f);
    }
    CHECK_OK(qmail_attach(m, gone, NULL, NULL));
    CHECK(unlink(gone) == 0);
    CHECK_ERR(qmail_submit(m, id, sizeof id), QMAIL_RESULT_ATTACHMENT, "attachments[1]", "No such file");
    qmail_message_free(m);
}

static void invalid_messages(void) {
    char id[QMAIL_ID_BUF_LEN];
    qmail_message *m = qmail_message_new();
    CHECK_OK(qmail_message_set_spool(m, spool));
    CHECK_ERR(qmail_submit(m, id, sizeof id), QMAIL_RESULT_INVALID_MESSAGE, "from", "From");
    CHECK_OK(qmail_message_set_from(m, "noreply@example.com"));
    CHECK_ERR(qmail_submit(m, id, sizeof id), QMAIL_RESULT_INVALID_MESSAGE, "to", "recipient");
    CHECK_OK(qmail_message_add_to(m, "customer@example.org"));
    CHECK_OK(qmail_message_set_html(m, "<img src=\"cid:missing\">"));
    CHECK_ERR(qmail_submit(m, id, sizeof id), QMAIL_RESULT_INVALID_MESSAGE, "html", "cid:missing");
    qmail_message_free(m);
}

static void unwritable_spools(void) {
    char id[QMAIL_ID_BUF_LEN];
    /* a regular file where the spool directory should be (permission bits do not stop root) */
    FILE *f = fopen(blocker, "w");
    CHECK(f != NULL);
    if (f) fclose(f);
    qmail_message *m = valid();
    CHECK_OK(qmail_message_set_spool(m, blocker));
    CHECK_ERR(qmail_submit(m, id, sizeof id), QMAIL_RESULT_SPOOL_UNAVAILABLE, "spool", blocker);
    CHECK(qmail_result_is_transient(qmail_last_error_result()));
    CHECK_OK(qmail_message_set_spool(m, under_blocker));
    CHECK_ERR(qmail_submit(m, id, sizeof id), QMAIL_RESULT_SPOOL_UNAVAILABLE, "spool", "Not a directory");
    /* the same through the default spools: every one of them fails */
    char list[1400];
    snprintf(list, sizeof list, "%s:%s", blocker, under_blocker);
    CHECK_OK(qmail_set_default_spool(list));
    qmail_message *d = qmail_message_new();
    CHECK_OK(qmail_message_set_from(d, "noreply@example.com"));
    CHECK_OK(qmail_message_add_to(d, "customer@example.org"));
    CHECK_ERR(qmail_submit(d, id, sizeof id), QMAIL_RESULT_SPOOL_UNAVAILABLE, "spool", NULL);
    qmail_message_free(d);
    qmail_message_free(m);
}

static void no_spool(void) {
    char id[QMAIL_ID_BUF_LEN];
    qmail_message *m = qmail_message_new();
    CHECK_OK(qmail_message_set_from(m, "noreply@example.com"));
    CHECK_OK(qmail_message_add_to(m, "customer@example.org"));
    CHECK_ERR(qmail_submit(m, id, sizeof id), QMAIL_RESULT_NO_SPOOL_CONFIGURED, "spool", "QMAIL_SPOOL");
    CHECK(!qmail_result_is_transient(QMAIL_RESULT_NO_SPOOL_CONFIGURED));
    CHECK_ERR(qmail_set_default_spool(""), QMAIL_RESULT_NO_SPOOL_CONFIGURED, "spool", NULL);
    CHECK_ERR(qmail_set_default_spool(":"), QMAIL_RESULT_NO_SPOOL_CONFIGURED, "spool", NULL);
    CHECK_ERR(qmail_set_default_spool("\xff"), QMAIL_RESULT_INVALID_UTF8, "spools", NULL);
    qmail_message_free(m);
}

static void id_buffer(void) {
    char id[QMAIL_ID_BUF_LEN];
    char small[10];
    qmail_message *m = valid();
    memset(small, 'x', sizeof small);
    CHECK_ERR(qmail_submit(m, small, sizeof small), QMAIL_RESULT_BUFFER_TOO_SMALL, "id_buf_len", "QMAIL_ID_BUF_LEN (129)");
    CHECK(small[0] == 'x'); /* written only on success */
    CHECK_ERR(qmail_submit(m, id, QMAIL_ID_BUF_LEN - 1), QMAIL_RESULT_BUFFER_TOO_SMALL, "id_buf_len", "not submitted");
    CHECK_ERR(qmail_submit(m, id, 0), QMAIL_RESULT_BUFFER_TOO_SMALL, "id_buf_len", NULL);
    qmail_message_free(m);
}

static void last_error_api(void) {
    qmail_message *m = valid();
    char buf[8];
    CHECK_ERR(qmail_message_add_to(m, "nope"), QMAIL_RESULT_INVALID_ADDRESS, "to", "'nope' has no '@'");
    size_t full = qmail_last_error_message(NULL, 0);
    CHECK(full == strlen(qtest_last_error()));
    memset(buf, 'x', sizeof buf);
    CHECK(qmail_last_error_message(buf, sizeof buf) == full);
    CHECK(strcmp(buf, "to: 'no") == 0); /* truncated, NUL-terminated */
    CHECK(qmail_last_error_field(buf, 2) == 2);
    CHECK(strcmp(buf, "t") == 0);
    /* a call that succeeds clears the last error */
    CHECK_OK(qmail_message_set_subject(m, "fine"));
    CHECK(qmail_last_error_result() == QMAIL_RESULT_OK);
    CHECK(qmail_last_error_message(buf, sizeof buf) == 0 && buf[0] == '\0');
    CHECK(qmail_last_error_field(buf, sizeof buf) == 0 && buf[0] == '\0');

    CHECK(strcmp(qmail_result_name(QMAIL_RESULT_OK), "Ok") == 0);
    CHECK(strcmp(qmail_result_name(QMAIL_RESULT_INVALID_ADDRESS), "InvalidAddress") == 0);
    CHECK(strcmp(qmail_result_name(QMAIL_RESULT_SPOOL_UNAVAILABLE), "SpoolUnavailable") == 0);
    CHECK(strcmp(qmail_result_name(QMAIL_RESULT_BUFFER_TOO_SMALL), "BufferTooSmall") == 0);
    CHECK(strcmp(qmail_result_name(12345), "Unknown") == 0);
    CHECK(qmail_result_is_transient(QMAIL_RESULT_SPOOL_UNAVAILABLE));
    CHECK(qmail_result_is_transient(QMAIL_RESULT_IO));
    CHECK(!qmail_result_is_transient(QMAIL_RESULT_OK));
    CHECK(!qmail_result_is_transient(QMAIL_RESULT_INVALID_ADDRESS));
    CHECK(!qmail_result_is_transient(QMAIL_RESULT_ATTACHMENT));
    CHECK(!qmail_result_is_transient(QMAIL_RESULT_NULL_PARAMETER));
    qmail_message_free(m);
}

/* A failed setter leaves the message as it was; submitted to WORKDIR/ok for the driver. */
static void unchanged_after_error(void) {
    char id[QMAIL_ID_BUF_LEN];
    qmail_message *m = qmail_message_new();
    CHECK_OK(qmail_message_set_spool(m, ok_spool));
    CHECK_OK(qmail_message_set_from(m, "First <first@example.com>"));
    CHECK_ERR(qmail_message_set_from(m, "Second <second@example.com"), QMAIL_RESULT_INVALID_ADDRESS, "from", NULL);
    CHECK_OK(qmail_message_add_to(m, "customer@example.org"));
    CHECK_ERR(qmail_message_add_to(m, "leak@example.org\r\n"), QMAIL_RESULT_INVALID_ADDRESS, "to", NULL);
    CHECK_OK(qmail_message_set_subject(m, "kept"));
    CHECK_ERR(qmail_message_set_subject(m, "replaced\r\nBcc: leak@example.org"), QMAIL_RESULT_INVALID_HEADER, "subject", NULL);
    CHECK_ERR(qmail_message_set_priority(m, 9), QMAIL_RESULT_INVALID_ARGUMENT, "priority", NULL);
    CHECK_OK(qmail_message_set_text(m, "x"));
    CHECK_OK(qmail_submit(m, id, sizeof id));
    printf("SHAPE unchanged_after_error %s\n", id);
    qmail_message_free(m);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: errors WORKDIR\n");
        return 2;
    }
    /* the no-spool case needs neither a default spool nor QMAIL_SPOOL */
    unsetenv("QMAIL_SPOOL");
    snprintf(workdir, sizeof workdir, "%s", argv[1]);
    snprintf(spool, sizeof spool, "%s/spool", argv[1]);
    snprintf(ok_spool, sizeof ok_spool, "%s/ok", argv[1]);
    snprintf(blocker, sizeof blocker, "%s/blocker", argv[1]);
    snprintf(under_blocker, sizeof under_blocker, "%s/spool", blocker);
    snprintf(file, sizeof file, "%s/attachment.txt", argv[1]);
    snprintf(gone, sizeof gone, "%s/gone.txt", argv[1]);
    FILE *f = fopen(file, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("attached", f);
        fclose(f);
    }

    no_spool(); /* first: before any default spool is set */
    null_parameters();
    invalid_utf8();
    bad_addresses();
    bad_headers();
    bad_arguments();
    attachments();
    invalid_messages();
    id_buffer();
    last_error_api();
    unwritable_spools();
    unchanged_after_error();
    return qtest_done("errors");
}
