/*
 * send_order.c: submit an order confirmation through libqmail. Copy it and adapt.
 *
 * Build (after scripts/build-c, or against an installed libqmail):
 *   export PKG_CONFIG_PATH=/path/to/qmail/target/c/lib/pkgconfig   # not needed once installed
 *   cc -std=c99 -Wall -o send_order send_order.c $(pkg-config --cflags --libs qmail)
 * Run (LD_LIBRARY_PATH=/path/to/qmail/target/c/lib too, unless libqmail is installed):
 *   QMAIL_SPOOL=/var/spool/qmail ./send_order customer@example.org [invoice.pdf]
 *
 * The message is validated, rendered and written durably into the spool; a qmail dispatcher
 * sends it. The program never waits for an SMTP server.
 */
#include <stdio.h>

#include <qmail.h>

/* Reports a failed call with the library's explanation; returns nonzero on failure. */
static int failed(qmail_result r, const char *what) {
    if (r == QMAIL_RESULT_OK) return 0;
    char msg[512];
    qmail_last_error_message(msg, sizeof msg); /* names the field at fault, e.g. "to: ..." */
    fprintf(stderr, "send_order: %s: %s (%s%s)\n", what, msg, qmail_result_name(r),
            qmail_result_is_transient(r) ? ", try again later" : "");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: send_order RECIPIENT [ATTACHMENT]\n");
        return 2;
    }
    /* The spool comes from QMAIL_SPOOL; qmail_set_default_spool("/var/spool/qmail") or
       qmail_message_set_spool(msg, ...) would name it in code instead. */
    qmail_message *msg = qmail_message_new();
    if (!msg) return 1;

    int bad = failed(qmail_message_set_from(msg, "Shop <noreply@example.com>"), "from")
           || failed(qmail_message_add_to(msg, argv[1]), "recipient")
           || failed(qmail_message_set_subject(msg, "Your order 42"), "subject")
           || failed(qmail_message_set_text(msg, "Thanks for your order!\nIt ships tomorrow.\n"), "text")
           || failed(qmail_message_set_html(msg, "<p>Thanks for your order!</p><p>It ships <b>tomorrow</b>.</p>"), "html")
           || failed(qmail_message_add_header(msg, "X-Order", "42"), "header")
           || (argc == 3 && failed(qmail_attach(msg, argv[2], NULL, NULL), "attachment"));

    char id[QMAIL_ID_BUF_LEN];
    if (!bad) bad = failed(qmail_submit(msg, id, sizeof id), "submit");
    qmail_message_free(msg);
    if (bad) return 1;
    printf("queued as %s\n", id);
    return 0;
}
