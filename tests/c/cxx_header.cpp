// cxx_header.cpp: qmail.h compiles as C++ (extern "C", the enum's underlying type) and a C++
// program links against libqmail and calls it.
//
//   cxx_header SPOOL
#include "qmail.h"

#include <cstdio>
#include <cstring>
#include <string>

static_assert(sizeof(qmail_result) == 4, "qmail_result is 32 bits, as in C");
static_assert(QMAIL_RESULT_INVALID_ADDRESS == 2002, "stable numbers");
static_assert(QMAIL_ID_BUF_LEN == QMAIL_ID_MAX + 1, "id buffer holds the NUL");

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: cxx_header SPOOL\n");
        return 2;
    }
    qmail_message *m = qmail_message_new();
    int failures = 0;
    failures += qmail_message_set_spool(m, argv[1]) != QMAIL_RESULT_OK;
    failures += qmail_message_set_from(m, "C++ <cxx@example.com>") != QMAIL_RESULT_OK;
    failures += qmail_message_add_to(m, "customer@example.org") != QMAIL_RESULT_OK;
    failures += qmail_message_set_subject(m, "from C++") != QMAIL_RESULT_OK;
    failures += qmail_message_set_text(m, "x") != QMAIL_RESULT_OK;
    qmail_result bad = qmail_message_add_cc(m, "nope");
    failures += bad != QMAIL_RESULT_INVALID_ADDRESS;
    failures += std::string(qmail_result_name(bad)) != "InvalidAddress";
    std::string text(qmail_last_error_message(nullptr, 0) + 1, '\0');
    qmail_last_error_message(&text[0], text.size());
    failures += text.compare(0, 4, "cc: ") != 0;
    char id[QMAIL_ID_BUF_LEN];
    qmail_result r = qmail_submit(m, id, sizeof id);
    failures += r != QMAIL_RESULT_OK;
    qmail_message_free(m);
    if (failures) {
        std::fprintf(stderr, "cxx_header: %d failure(s), last: %s\n", failures, text.c_str());
        return 1;
    }
    std::printf("SHAPE cxx %s\n", id);
    std::fprintf(stderr, "cxx_header: all checks passed (libqmail %s)\n", qmail_version());
    return 0;
}
