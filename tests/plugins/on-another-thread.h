// For plugin unit tests that play several shards: each test host (one plugin instance, one
// shard) on a thread of its own, as in payhostd.

#ifndef PAYHOST_TESTS_PLUGINS_ON_ANOTHER_THREAD_H_
#define PAYHOST_TESTS_PLUGINS_ON_ANOTHER_THREAD_H_

#include <kj/exception.h>

#include <gtest/gtest.h>

#include <thread>
#include <utility>

namespace payhost::test {

// Runs `body` on a new thread (which can have a test host of its own) and waits for it; what it
// throws fails the test.
template <typename Body>
void onAnotherThread(Body&& body) {
  kj::Maybe<kj::Exception> failure;
  std::thread thread([&]() { failure = kj::runCatchingExceptions(std::forward<Body>(body)); });
  thread.join();
  KJ_IF_MAYBE (exception, failure) {
    ADD_FAILURE() << "on the other thread: " << exception->getDescription().cStr();
  }
}

}  // namespace payhost::test

#endif  // PAYHOST_TESTS_PLUGINS_ON_ANOTHER_THREAD_H_
