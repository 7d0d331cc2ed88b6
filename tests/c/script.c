/*
 * script.c: runs the C API from a script on stdin, one call per line, so that a driver can
 * push any input (the shared cases of tests/cases/cases.json) through the C layer.
 *
 *   script < commands
 *
 * A line is a command and its arguments separated by TABs. Arguments take the escapes \r \n
 * \t \\ and \xHH; a lone "-" is NULL. Commands: new, free, spool, from, sender, reply_to, to,
 * cc, bcc, FIELD_named NAME ADDRESS (from, sender, reply_to, to, cc, bcc), read_receipt_to,
 * subject, text, html, header NAME VALUE, priority N, envelope_from, not_before N,
 * list_unsubscribe URL MAILTO ONE_CLICK,
 * attach PATH FILENAME TYPE, attach_bytes HEX FILENAME TYPE, inline PATH CID TYPE,
 * inline_bytes HEX CID TYPE, submit.
 * Each line answers one line: "OK", "OK <id>" for submit, or
 * "ERR <number> <name> <field>\t<message>" (field "-" when none; both escaped as above).
 * As a careful C program would, it stops at the first error: the calls after it, up to the
 * next "new", answer "SKIP".
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>

#include "qtest.h"

#define MAX_ARGS 4

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Unescapes in place; returns NULL for "-". */
static char *unescape(char *s) {
    if (strcmp(s, "-") == 0) return NULL;
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p != '\\' || !p[1]) {
            *o++ = *p;
            continue;
        }
        p++;
        switch (*p) {
        case 'r': *o++ = '\r'; break;
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'x':
            if (hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
                *o++ = (char)(hexval(p[1]) * 16 + hexval(p[2]));
                p += 2;
            }
            break;
        default: *o++ = *p;
        }
    }
    *o = '\0';
    return s;
}

/* Decodes hex into a new buffer; *len gets its length. */
static uint8_t *from_hex(const char *hex, size_t *len) {
    size_t n = hex ? strlen(hex) / 2 : 0;
    uint8_t *out = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) out[i] = (uint8_t)(hexval(hex[2 * i]) * 16 + hexval(hex[2 * i + 1]));
    *len = n;
    return out;
}

static void print_escaped(const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\\') fputs("\\\\", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
}

static void answer(qmail_result r, const char *id) {
    if (r == QMAIL_RESULT_OK) {
        if (id) printf("OK %s\n", id);
        else puts("OK");
        return;
    }
    char field[256], message[2048];
    qmail_last_error_field(field, sizeof field);
    qmail_last_error_message(message, sizeof message);
    printf("ERR %u %s ", (unsigned)r, qmail_result_name(r));
    if (field[0]) print_escaped(field);
    else putchar('-');
    putchar('\t');
    print_escaped(message);
    putchar('\n');
}

int main(void) {
    static char line[1 << 20];
    qmail_message *m = NULL;
    int failed = 0;
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        char *cmd = line, *a[MAX_ARGS] = {NULL, NULL, NULL, NULL};
        char *tab = strchr(line, '\t');
        int argc = 0;
        while (tab && argc < MAX_ARGS) {
            *tab = '\0';
            a[argc] = tab + 1;
            tab = strchr(a[argc], '\t');
            argc++;
        }
        for (int i = 0; i < argc; i++) a[i] = unescape(a[i]);
        qmail_result r = QMAIL_RESULT_OK;
        char id[QMAIL_ID_BUF_LEN];
        const char *out_id = NULL;
        size_t len = 0;
        uint8_t *bytes = NULL;

        if (failed && strcmp(cmd, "new") && strcmp(cmd, "free")) {
            puts("SKIP");
            continue;
        }
        if (!strcmp(cmd, "new")) { qmail_message_free(m); m = qmail_message_new(); failed = 0; }
        else if (!strcmp(cmd, "free")) { qmail_message_free(m); m = NULL; }
        else if (!strcmp(cmd, "spool")) r = qmail_message_set_spool(m, a[0]);
        else if (!strcmp(cmd, "from")) r = qmail_message_set_from(m, a[0]);
        else if (!strcmp(cmd, "sender")) r = qmail_message_set_sender(m, a[0]);
        else if (!strcmp(cmd, "reply_to")) r = qmail_message_add_reply_to(m, a[0]);
        else if (!strcmp(cmd, "to")) r = qmail_message_add_to(m, a[0]);
        else if (!strcmp(cmd, "cc")) r = qmail_message_add_cc(m, a[0]);
        else if (!strcmp(cmd, "bcc")) r = qmail_message_add_bcc(m, a[0]);
        else if (!strcmp(cmd, "from_named")) r = qmail_message_set_from_with_name(m, a[0], a[1]);
        else if (!strcmp(cmd, "sender_named")) r = qmail_message_set_sender_with_name(m, a[0], a[1]);
        else if (!strcmp(cmd, "reply_to_named")) r = qmail_message_add_reply_to_with_name(m, a[0], a[1]);
        else if (!strcmp(cmd, "to_named")) r = qmail_message_add_to_with_name(m, a[0], a[1]);
        else if (!strcmp(cmd, "cc_named")) r = qmail_message_add_cc_with_name(m, a[0], a[1]);
        else if (!strcmp(cmd, "bcc_named")) r = qmail_message_add_bcc_with_name(m, a[0], a[1]);
        else if (!strcmp(cmd, "read_receipt_to")) r = qmail_message_set_read_receipt_to(m, a[0]);
        else if (!strcmp(cmd, "subject")) r = qmail_message_set_subject(m, a[0]);
        else if (!strcmp(cmd, "text")) r = qmail_message_set_text(m, a[0]);
        else if (!strcmp(cmd, "html")) r = qmail_message_set_html(m, a[0]);
        else if (!strcmp(cmd, "header")) r = qmail_message_add_header(m, a[0], a[1]);
        else if (!strcmp(cmd, "priority")) r = qmail_message_set_priority(m, a[0] ? atoi(a[0]) : 0);
        else if (!strcmp(cmd, "envelope_from")) r = qmail_message_set_envelope_from(m, a[0]);
        else if (!strcmp(cmd, "not_before")) r = qmail_message_set_not_before(m, a[0] ? atoll(a[0]) : 0);
        else if (!strcmp(cmd, "list_unsubscribe"))
            r = qmail_message_set_list_unsubscribe(m, a[0], a[1], a[2] ? atoi(a[2]) : 0);
        else if (!strcmp(cmd, "attach")) r = qmail_attach(m, a[0], a[1], a[2]);
        else if (!strcmp(cmd, "inline")) r = qmail_attach_inline(m, a[0], a[1], a[2]);
        else if (!strcmp(cmd, "attach_bytes")) {
            bytes = from_hex(a[0], &len);
            r = qmail_attach_bytes(m, bytes, len, a[1], a[2]);
        } else if (!strcmp(cmd, "inline_bytes")) {
            bytes = from_hex(a[0], &len);
            r = qmail_attach_inline_bytes(m, bytes, len, a[1], a[2]);
        } else if (!strcmp(cmd, "submit")) {
            r = qmail_submit(m, id, sizeof id);
            out_id = id;
        } else {
            fprintf(stderr, "script: unknown command '%s'\n", cmd);
            qmail_message_free(m);
            return 2;
        }
        free(bytes);
        failed = r != QMAIL_RESULT_OK;
        answer(r, out_id);
        fflush(stdout);
    }
    qmail_message_free(m);
    return 0;
}
