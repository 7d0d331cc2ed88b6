/*
 * threads.c: 8 threads submit at once, each with its own message handles; half name the
 * spool on the message, half use the default spool set once by main. The last error is per
 * thread: an error on main survives the threads' successful calls.
 *
 *   threads SPOOL [PER_THREAD]
 *
 * Prints "ID <thread> <n> <queue id>" for each submit after all threads joined; the driver
 * checks every id is unique and its spool file holds the subject "thread T message N".
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>

#include "qtest.h"

#define THREADS 8
#define MAX_PER_THREAD 200

static const char *spool;
static int per_thread = 25;
static char ids[THREADS][MAX_PER_THREAD][QMAIL_ID_BUF_LEN];
static int failures[THREADS];

static void *worker(void *arg) {
    int t = (int)(size_t)arg;
    char subject[64];
    if (qmail_last_error_result() != QMAIL_RESULT_OK) failures[t]++; /* a new thread: no error */
    for (int n = 0; n < per_thread; n++) {
        qmail_message *m = qmail_message_new();
        snprintf(subject, sizeof subject, "thread %d message %d", t, n);
        if (t % 2 == 0 && qmail_message_set_spool(m, spool) != QMAIL_RESULT_OK) failures[t]++;
        if (qmail_message_set_from(m, "Shop <noreply@example.com>") != QMAIL_RESULT_OK) failures[t]++;
        if (qmail_message_add_to(m, "customer@example.org") != QMAIL_RESULT_OK) failures[t]++;
        if (qmail_message_add_to(m, "bad address") != QMAIL_RESULT_INVALID_ADDRESS) failures[t]++;
        if (qmail_message_set_subject(m, subject) != QMAIL_RESULT_OK) failures[t]++;
        if (qmail_message_set_text(m, "concurrent") != QMAIL_RESULT_OK) failures[t]++;
        qmail_result r = qmail_submit(m, ids[t][n], QMAIL_ID_BUF_LEN);
        if (r != QMAIL_RESULT_OK) {
            char buf[512];
            qmail_last_error_message(buf, sizeof buf);
            fprintf(stderr, "thread %d message %d: %s: %s\n", t, n, qmail_result_name(r), buf);
            failures[t]++;
            ids[t][n][0] = '\0';
        }
        qmail_message_free(m);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: threads SPOOL [PER_THREAD]\n");
        return 2;
    }
    spool = argv[1];
    if (argc > 2) per_thread = atoi(argv[2]);
    if (per_thread < 1 || per_thread > MAX_PER_THREAD) {
        fprintf(stderr, "threads: PER_THREAD must be 1..%d\n", MAX_PER_THREAD);
        return 2;
    }
    CHECK_OK(qmail_set_default_spool(spool));

    /* an error on main, kept while the threads succeed and fail on their own */
    qmail_message *probe = qmail_message_new();
    CHECK_ERR(qmail_message_add_cc(probe, "main@@example.org"), QMAIL_RESULT_INVALID_ADDRESS, "cc", NULL);

    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) CHECK(pthread_create(&th[t], NULL, worker, (void *)(size_t)t) == 0);
    for (int t = 0; t < THREADS; t++) CHECK(pthread_join(th[t], NULL) == 0);

    CHECK(qmail_last_error_result() == QMAIL_RESULT_INVALID_ADDRESS);
    CHECK(strncmp(qtest_last_error(), "cc: ", 4) == 0);
    qmail_message_free(probe);

    for (int t = 0; t < THREADS; t++) {
        if (failures[t]) {
            fprintf(stderr, "thread %d: %d failure(s)\n", t, failures[t]);
            qtest_failures++;
        }
        for (int n = 0; n < per_thread; n++)
            if (ids[t][n][0]) printf("ID %d %d %s\n", t, n, ids[t][n]);
    }
    return qtest_done("threads");
}
