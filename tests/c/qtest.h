/*
 * qtest.h: the few helpers the C test programs share (checks that print where they failed,
 * and the last error as a string). Test code only; not part of libqmail.
 */
#ifndef QTEST_H
#define QTEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qmail.h"

static int qtest_failures = 0;

/* The calling thread's last error text (static buffer: one thread at a time). */
static inline const char *qtest_last_error(void) {
    static char buf[1024];
    qmail_last_error_message(buf, sizeof buf);
    return buf;
}

static inline const char *qtest_last_field(void) {
    static char buf[256];
    qmail_last_error_field(buf, sizeof buf);
    return buf;
}

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);     \
            qtest_failures++;                                                            \
        }                                                                                \
    } while (0)

/* A call that must succeed. */
#define CHECK_OK(call)                                                                   \
    do {                                                                                 \
        qmail_result qt_r = (call);                                                      \
        if (qt_r != QMAIL_RESULT_OK) {                                                   \
            fprintf(stderr, "%s:%d: %s returned %u %s: %s\n", __FILE__, __LINE__, #call, \
                    (unsigned)qt_r, qmail_result_name(qt_r), qtest_last_error());        \
            qtest_failures++;                                                            \
        }                                                                                \
    } while (0)

/*
 * A call that must fail with `code`, naming `field` (NULL: no field), with a message that
 * contains `text` (NULL: any).
 */
#define CHECK_ERR(call, code, field, text)                                               \
    do {                                                                                 \
        qmail_result qt_r = (call);                                                      \
        qtest_check_err(__FILE__, __LINE__, #call, qt_r, (code), (field), (text));       \
    } while (0)

static inline void qtest_check_err(const char *file, int line, const char *call, qmail_result got,
                            qmail_result want, const char *field, const char *text) {
    const char *msg = qtest_last_error();
    const char *f = qtest_last_field();
    if (got != want) {
        fprintf(stderr, "%s:%d: %s returned %u %s, expected %u %s (%s)\n", file, line, call,
                (unsigned)got, qmail_result_name(got), (unsigned)want, qmail_result_name(want), msg);
        qtest_failures++;
        return;
    }
    if (qmail_last_error_result() != want) {
        fprintf(stderr, "%s:%d: %s: last error result is %u, expected %u\n", file, line, call,
                (unsigned)qmail_last_error_result(), (unsigned)want);
        qtest_failures++;
    }
    if (strcmp(f, field ? field : "") != 0) {
        fprintf(stderr, "%s:%d: %s: field is \"%s\", expected \"%s\" (%s)\n", file, line, call, f,
                field ? field : "", msg);
        qtest_failures++;
    }
    if (field && strncmp(msg, field, strlen(field)) != 0) {
        fprintf(stderr, "%s:%d: %s: message \"%s\" does not start with the field \"%s\"\n", file,
                line, call, msg, field);
        qtest_failures++;
    }
    if (text && !strstr(msg, text)) {
        fprintf(stderr, "%s:%d: %s: message \"%s\" does not contain \"%s\"\n", file, line, call,
                msg, text);
        qtest_failures++;
    }
}

/* Ends main: 0 when every check passed. */
static inline int qtest_done(const char *name) {
    if (qtest_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, qtest_failures);
        return 1;
    }
    fprintf(stderr, "%s: all checks passed\n", name);
    return 0;
}

#endif /* QTEST_H */
