// Throwing a kj::Exception whose description is exactly one readable message.
//
// KJ_REQUIRE and KJ_FAIL_REQUIRE prefix "requirement not met" and render each argument as
// "expr = value"; messages meant for operators (a refused plugin, a bad config key) use
// PAYHOST_FAIL instead, which keeps the text as written.

#pragma once

#include <kj/exception.h>
#include <kj/string.h>

// PAYHOST_FAIL(FAILED, "plugin ", path, ": missing entry symbol")
#define PAYHOST_FAIL(type, ...) \
  ::kj::throwFatalException(    \
      ::kj::Exception(::kj::Exception::Type::type, __FILE__, __LINE__, ::kj::str(__VA_ARGS__)))
