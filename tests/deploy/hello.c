/* A C program as a user writes it against the installed SDK (tests/deploy, 80-deploy.sh):
 * built with pkg-config and with CMake, run without LD_LIBRARY_PATH.
 *   hello SPOOL RCPT   submits one built and one raw message to SPOOL, prints both queue ids;
 *                      exit 0, or 1 with the error (its name and field) on stderr. */
#include <qmail.h>
#include <stdio.h>
#include <string.h>

#if !defined(QMAIL_VERSION_MAJOR) || QMAIL_VERSION_NUMBER < 100
#error "qmail.h has no version macros"
#endif

static int fail(qmail_result r, const char *what) {
    char msg[512], field[128];
    qmail_last_error_message(msg, sizeof msg);
    qmail_last_error_field(field, sizeof field);
    fprintf(stderr, "%s: %s (field %s): %s\n", what, qmail_result_name(r), field, msg);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: hello SPOOL RCPT\n");
        return 2;
    }
    if (strcmp(qmail_version(), QMAIL_VERSION) != 0) {
        fprintf(stderr, "header %s, library %s\n", QMAIL_VERSION, qmail_version());
        return 1;
    }
    qmail_result r = qmail_set_default_spool(argv[1]);
    if (r != QMAIL_RESULT_OK) return fail(r, "set_default_spool");
    qmail_message *m = qmail_message_new();
    if (!m) return fail(qmail_last_error_result(), "message_new");
    if ((r = qmail_message_set_from(m, "Shop <noreply@example.com>")) != QMAIL_RESULT_OK ||
        (r = qmail_message_add_to(m, argv[2])) != QMAIL_RESULT_OK ||
        (r = qmail_message_set_subject(m, "from C")) != QMAIL_RESULT_OK ||
        (r = qmail_message_set_text(m, "built in C")) != QMAIL_RESULT_OK) {
        qmail_message_free(m);
        return fail(r, "build");
    }
    char id[QMAIL_ID_BUF_LEN];
    r = qmail_submit(m, id, sizeof id);
    qmail_message_free(m);
    if (r != QMAIL_RESULT_OK) return fail(r, "submit");
    printf("%s\n", id);

    static const char raw[] = "From: Shop <noreply@example.com>\nSubject: raw from C\n\nraw body\n";
    const char *rcpts[] = {argv[2]};
    r = qmail_submit_raw((const uint8_t *)raw, sizeof raw - 1, NULL, rcpts, 1, NULL, 0, id,
                         sizeof id);
    if (r != QMAIL_RESULT_OK) return fail(r, "submit_raw");
    printf("%s\n", id);
    return 0;
}
