// A C++ program against the installed SDK's qmail.hpp (tests/deploy, 80-deploy.sh).
//   hello_cpp SPOOL RCPT   submits one message, prints its id; checks that a bad address
//                          throws qmail::Error carrying the code and the field.
#include <qmail.hpp>

#include <iostream>

int main(int argc, char **argv) {
  if (argc != 3) {
    std::cerr << "usage: hello_cpp SPOOL RCPT\n";
    return 2;
  }
  try {
    qmail::Message bad;
    bad.from("noreply@example.com").to("not-an-address");
    std::cerr << "a bad address was accepted\n";
    return 1;
  } catch (const qmail::Error &e) {
    if (e.code() != QMAIL_RESULT_INVALID_ADDRESS || e.field() != "to" || e.transient()) {
      std::cerr << "unexpected error " << e.name() << " field " << e.field() << ": " << e.what()
                << "\n";
      return 1;
    }
  }
  try {
    qmail::Message m;
    m.from("Shop <noreply@example.com>")
        .to(argv[2])
        .subject("from C++")
        .text("built in C++")
        .spool(argv[1]);
    qmail::Message moved = std::move(m);  // unique ownership: moves, never copies
    std::cout << moved.submit() << "\n";
    std::cout << qmail::submit_raw("From: a@example.com\nSubject: raw C++\n\nbody\n", "",
                                   {argv[2]}, argv[1])
              << "\n";
  } catch (const qmail::Error &e) {
    std::cerr << e.name() << " (field " << e.field() << "): " << e.what() << "\n";
    return 1;
  }
  return 0;
}
