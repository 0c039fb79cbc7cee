// Lets GoogleTest print KJ strings and the issuer's enums in failure messages (found by ADL).

#ifndef PAYHOST_TESTS_PLUGINS_CARD_PROCESSOR_PRINT_H_
#define PAYHOST_TESTS_PLUGINS_CARD_PROCESSOR_PRINT_H_

#include <kj/string.h>

#include <ostream>

#include "issuer.h"

namespace kj {
inline void PrintTo(const String& text, std::ostream* out) {
  *out << '"' << text.cStr() << '"';
}
inline void PrintTo(const StringPtr& text, std::ostream* out) {
  *out << '"' << text.cStr() << '"';
}
}  // namespace kj

namespace payhost::plugins::card {
inline void PrintTo(TransactionState value, std::ostream* out) {
  *out << nameOf(value).cStr();
}
inline void PrintTo(DeclineCode value, std::ostream* out) {
  *out << nameOf(value).cStr();
}
inline void PrintTo(Advice value, std::ostream* out) {
  *out << nameOf(value).cStr();
}
inline void PrintTo(RejectCode value, std::ostream* out) {
  *out << nameOf(value).cStr();
}
}  // namespace payhost::plugins::card

#endif  // PAYHOST_TESTS_PLUGINS_CARD_PROCESSOR_PRINT_H_
