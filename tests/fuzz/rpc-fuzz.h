// Shared by the RPC fuzz targets: one call to a plugin's service, in process through the SDK's
// test host, with parameters decoded from fuzzer bytes. The input's first byte picks the method;
// the rest is read as a Cap'n Proto message (flat array with its segment table) under reader
// limits, and its root becomes the call's parameters, as a caller's message would.
//
// Single-threaded (libFuzzer's thread).

#pragma once

#include "host/config/reader-limits.h"

#include <payhost/testing.h>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/debug.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace payhost::fuzz {

// The fuzz target's plugin instance: one for many inputs, as a shard keeps one (state carried
// from call to call is part of what is fuzzed), but a fresh one every `inputs` inputs, because
// the test host keeps every log record and would otherwise grow for as long as the run. The last
// one is destroyed at exit (a test host removes its temporary files then).
template <typename Target>
Target& recycled(uint32_t inputs = 20000) {
  static Target* current = nullptr;
  static uint32_t count = 0;
  if (current == nullptr) {
    atexit([]() {
      delete current;
      current = nullptr;
    });
  }
  if (current == nullptr || ++count % inputs == 0) {
    delete current;
    current = nullptr;
    current = new Target;
  }
  return *current;
}

// The limits payhostd reads a client's message under, with `[limits]` at its defaults (one place:
// host/config/reader-limits.h).
inline capnp::ReaderOptions readerOptions() {
  return host::clientReaderOptions();
}

// Sends method `method` of `interfaceId` to `service` with the Cap'n Proto message in `bytes`
// (a flat array with its segment table) as its parameters, lets the plugin's clock move on a
// little, and drops the call if it is still running. A malformed message or a refused call is a
// kj::Exception and ignored; anything else is a finding.
inline void callMethod(testing::TestHost& host, capnp::Capability::Client& service,
                       uint64_t interfaceId, uint16_t method, const uint8_t* bytes, size_t size) {
  // Aligned copy: a message on the wire is read into word-aligned buffers too.
  size_t words = size / sizeof(capnp::word);
  auto buffer = kj::heapArray<capnp::word>(words);
  memcpy(buffer.begin(), bytes, words * sizeof(capnp::word));
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 capnp::FlatArrayMessageReader reader(buffer, readerOptions());
                 auto request = service.typelessRequest(interfaceId, method, nullptr);
                 request.set(reader.getRoot<capnp::AnyPointer>());
                 auto promise = request.send();
                 auto& waitScope = host.waitScope();
                 for (int i = 0; i < 4 && !promise.poll(waitScope); ++i) {
                   host.advanceTime(1 * kj::SECONDS);
                 }
                 if (promise.poll(waitScope)) (void)promise.wait(waitScope);
               })) {
    (void)e;
  }
}

// One call decoded from `data`: its first byte picks the method of `service` (interface
// `interfaceId`, `methods` methods), the rest is the parameters (see callMethod).
inline void callOnce(testing::TestHost& host, capnp::Capability::Client& service,
                     uint64_t interfaceId, uint16_t methods, const uint8_t* data, size_t size) {
  if (size < 1) return;
  callMethod(host, service, interfaceId, data[0] % methods, data + 1, size - 1);
}

// Writes a seed file `name` (default "method-N") in `dir`: the selector byte `method`, then
// `message` as a flat array.
inline void writeSeed(const char* dir, int method, capnp::MessageBuilder& message,
                      kj::StringPtr name = nullptr) {
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  auto path = name == nullptr ? kj::str(dir, "/method-", method) : kj::str(dir, "/", name);
  int fd = open(path.cStr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  KJ_ASSERT(fd >= 0, path);
  kj::AutoCloseFd owned(fd);
  kj::byte selector = static_cast<kj::byte>(method);
  kj::FdOutputStream out(fd);
  out.write(&selector, 1);
  out.write(bytes.begin(), bytes.size());
}

// The start every target shares: with PAYHOST_FUZZ_WRITE_SEEDS=DIR set, `write` puts the target's
// seed corpus into DIR and the process exits instead of fuzzing (scripts/fuzz.sh --seeds).
inline void writeSeedsIfAsked(void (*write)(const char* dir)) {
  if (const char* dir = getenv("PAYHOST_FUZZ_WRITE_SEEDS")) {
    write(dir);
    exit(0);
  }
}

}  // namespace payhost::fuzz
