/*
 * qmail.hpp: a C++11 wrapper of the qmail C ABI (qmail.h, libqmail).
 *
 * Header-only; link with libqmail as for C (`pkg-config --cflags --libs qmail`, or CMake:
 * `find_package(qmail)` and `target_link_libraries(app PRIVATE qmail::qmail)`).
 *
 *   - qmail::Message owns a qmail_message (std::unique_ptr with qmail_message_free): movable,
 *     not copyable, freed when it goes out of scope, also during stack unwinding.
 *   - Every failing call throws qmail::Error, which carries the qmail_result code
 *     (code(), name(), transient()) and the field at fault (field(): "to", "attachments[0]",
 *     "spool", ...); what() is the library's message ("to: 'x' has no '@'").
 *   - Strings are std::string (UTF-8); bytes are std::string or (pointer, length).
 *
 *   qmail::Message m;
 *   m.from("Shop <noreply@example.com>").to("customer@example.org")
 *    .subject("Your order").text("Thanks!");
 *   std::string id = m.submit();                       // throws qmail::Error
 *
 * Threads: as the C API (a Message is used by one thread at a time; submit from many).
 */
#ifndef QMAIL_HPP
#define QMAIL_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qmail.h"

namespace qmail {

/** A failed qmail call: the result code, the field at fault and the library's message. */
class Error : public std::runtime_error {
 public:
  Error(qmail_result code, std::string field, const std::string &message)
      : std::runtime_error(message), code_(code), field_(std::move(field)) {}

  /** The result code (QMAIL_RESULT_*). */
  qmail_result code() const noexcept { return code_; }
  /** The code's name, e.g. "QMAIL_RESULT_INVALID_ADDRESS". */
  const char *name() const noexcept { return qmail_result_name(static_cast<uint32_t>(code_)); }
  /** The field at fault ("from", "to", "attachments[2]", "spool", a parameter), or "". */
  const std::string &field() const noexcept { return field_; }
  /** True when trying again later may succeed (e.g. QMAIL_RESULT_SPOOL_UNAVAILABLE). */
  bool transient() const noexcept {
    return qmail_result_is_transient(static_cast<uint32_t>(code_));
  }

 private:
  qmail_result code_;
  std::string field_;
};

namespace detail {

/** Reads one of the snprintf-like qmail_last_error_* functions whole. */
inline std::string last(size_t (*get)(char *, size_t)) {
  std::vector<char> buf(256);
  size_t n = get(buf.data(), buf.size());
  if (n >= buf.size()) {
    buf.resize(n + 1);
    get(buf.data(), buf.size());
  }
  return std::string(buf.data());
}

/** Throws qmail::Error for anything but QMAIL_RESULT_OK. */
inline void check(qmail_result r) {
  if (r != QMAIL_RESULT_OK) {
    throw Error(r, last(qmail_last_error_field), last(qmail_last_error_message));
  }
}

inline const char *opt(const std::string &s) { return s.empty() ? nullptr : s.c_str(); }

struct MessageFree {
  void operator()(qmail_message *m) const noexcept { qmail_message_free(m); }
};

}  // namespace detail

/** The library's version at run time, e.g. "0.1.0" (QMAIL_VERSION is the header's). */
inline std::string version() { return qmail_version(); }

/** Sets the process-wide default spool(s) ("/var/spool/qmail", colon-separated). */
inline void set_default_spool(const std::string &spools) {
  detail::check(qmail_set_default_spool(spools.c_str()));
}

/** As set_default_spool, with durability and the spool file mode (default 0640). */
inline void set_default_spool(const std::string &spools, bool durable, uint32_t file_mode) {
  detail::check(qmail_set_default_spool_with(spools.c_str(), durable, file_mode));
}

/** A message being built; submit() spools it. Owns its qmail_message. */
class Message {
 public:
  /** A new, empty message. Throws qmail::Error when the library cannot make one. */
  Message() : m_(qmail_message_new()) {
    if (!m_) {
      detail::check(qmail_last_error_result() == QMAIL_RESULT_OK ? QMAIL_RESULT_UNKNOWN
                                                                  : qmail_last_error_result());
    }
  }
  Message(Message &&) noexcept = default;
  Message &operator=(Message &&) noexcept = default;
  Message(const Message &) = delete;
  Message &operator=(const Message &) = delete;

  /** The From mailbox ("Name <addr>" or "addr"). */
  Message &from(const std::string &address) {
    detail::check(qmail_message_set_from(m_.get(), address.c_str()));
    return *this;
  }
  /** Adds a To recipient. */
  Message &to(const std::string &address) {
    detail::check(qmail_message_add_to(m_.get(), address.c_str()));
    return *this;
  }
  /** Adds a Cc recipient. */
  Message &cc(const std::string &address) {
    detail::check(qmail_message_add_cc(m_.get(), address.c_str()));
    return *this;
  }
  /** Adds a Bcc recipient (envelope only). */
  Message &bcc(const std::string &address) {
    detail::check(qmail_message_add_bcc(m_.get(), address.c_str()));
    return *this;
  }
  /** Sets the envelope sender (MAIL FROM); "<>" for the null reverse-path. */
  Message &envelope_from(const std::string &address) {
    detail::check(qmail_message_set_envelope_from(m_.get(), address.c_str()));
    return *this;
  }
  /** Adds an envelope recipient (RCPT TO); the first replaces those of To, Cc and Bcc. */
  Message &envelope_to(const std::string &address) {
    detail::check(qmail_message_add_envelope_to(m_.get(), address.c_str()));
    return *this;
  }
  /** Adds a Reply-To address. */
  Message &reply_to(const std::string &address) {
    detail::check(qmail_message_add_reply_to(m_.get(), address.c_str()));
    return *this;
  }
  /** The Subject. */
  Message &subject(const std::string &subject) {
    detail::check(qmail_message_set_subject(m_.get(), subject.c_str()));
    return *this;
  }
  /** The plain-text body. */
  Message &text(const std::string &text) {
    detail::check(qmail_message_set_text(m_.get(), text.c_str()));
    return *this;
  }
  /** The HTML body. */
  Message &html(const std::string &html) {
    detail::check(qmail_message_set_html(m_.get(), html.c_str()));
    return *this;
  }
  /** An extra header field. */
  Message &header(const std::string &name, const std::string &value) {
    detail::check(qmail_message_add_header(m_.get(), name.c_str(), value.c_str()));
    return *this;
  }
  /** The spool directory of this message (else the default spools). */
  Message &spool(const std::string &path) {
    detail::check(qmail_message_set_spool(m_.get(), path.c_str()));
    return *this;
  }
  /** Not sent before this time (Unix seconds). */
  Message &not_before(int64_t unix_seconds) {
    detail::check(qmail_message_set_not_before(m_.get(), unix_seconds));
    return *this;
  }
  /** Attaches a file (read at submit); empty filename/content_type: from the path. */
  Message &attach(const std::string &path, const std::string &filename = std::string(),
                  const std::string &content_type = std::string()) {
    detail::check(qmail_attach(m_.get(), path.c_str(), detail::opt(filename),
                               detail::opt(content_type)));
    return *this;
  }
  /** Attaches bytes under a file name. */
  Message &attach_bytes(const std::string &data, const std::string &filename,
                        const std::string &content_type = std::string()) {
    detail::check(qmail_attach_bytes(m_.get(), reinterpret_cast<const uint8_t *>(data.data()),
                                     data.size(), filename.c_str(), detail::opt(content_type)));
    return *this;
  }

  /** Validates, renders and durably spools the message; returns its queue id. */
  std::string submit() const {
    char id[QMAIL_ID_BUF_LEN];
    detail::check(qmail_submit(m_.get(), id, sizeof id));
    return std::string(id);
  }

  /** The C handle, still owned by this object (for calls the wrapper does not cover). */
  qmail_message *get() const noexcept { return m_.get(); }

 private:
  std::unique_ptr<qmail_message, detail::MessageFree> m_;
};

/**
 * Spools an already composed RFC 5322 message (qmail_submit_raw): envelope_from "" = Sender,
 * else From ("<>" = null path); recipients empty = To, Cc and Bcc; spool "" = the default
 * spools; not_before 0 = now. Returns the queue id; throws qmail::Error.
 */
inline std::string submit_raw(const std::string &data,
                              const std::string &envelope_from = std::string(),
                              const std::vector<std::string> &recipients =
                                  std::vector<std::string>(),
                              const std::string &spool = std::string(), int64_t not_before = 0) {
  std::vector<const char *> r;
  r.reserve(recipients.size());
  for (const std::string &s : recipients) r.push_back(s.c_str());
  char id[QMAIL_ID_BUF_LEN];
  detail::check(qmail_submit_raw(reinterpret_cast<const uint8_t *>(data.data()), data.size(),
                                 detail::opt(envelope_from), r.empty() ? nullptr : r.data(),
                                 r.size(), detail::opt(spool), not_before, id, sizeof id));
  return std::string(id);
}

}  // namespace qmail

#endif /* QMAIL_HPP */
