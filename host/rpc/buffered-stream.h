// A buffering layer over a connection's byte stream, so Cap'n Proto RPC costs fewer system calls
// per call: reads are served from a 64 KiB buffer refilled by one large read, and writes are
// gathered and sent once the event loop has nothing else to run (`kj::evalLast`), or at once when
// 64 KiB are pending. Under load a burst of calls then costs one read and one write instead of
// about five reads and one write per call (shared/BASELINE.md measured the gap).
//
// Writes complete as soon as they are buffered, until more than 4 MiB wait to be sent: then the
// write waits until the socket has taken them (back-pressure). A failed send is reported by the
// next write. `shutdownWrite()` sends what is pending first. Data still pending when the stream
// is destroyed is dropped, as an unsent kernel buffer would be on close.
//
// The gain needs both ends: a peer that sends one small write per call still makes the reader
// take them one by one. payhostd wraps the connections it accepts; the benchmark's Cap'n Proto
// clients wrap theirs (bench/suite.cpp).
//
// Shard-local: the stream and every promise it returns belong to the event loop that created it.

#pragma once

#include <kj/async-io.h>
#include <kj/vector.h>

#include <cstddef>

namespace payhost::host {

class BufferedStream final : public kj::AsyncIoStream, private kj::TaskSet::ErrorHandler {
public:
  static constexpr size_t READ_BUFFER_BYTES = size_t{64} * 1024;
  // Pending bytes that start a send at once instead of at the end of the event-loop turn.
  static constexpr size_t FLUSH_BYTES = size_t{64} * 1024;
  // Pending bytes above which writes wait for the socket.
  static constexpr size_t MAX_PENDING_BYTES = size_t{4} * 1024 * 1024;

  explicit BufferedStream(kj::Own<kj::AsyncIoStream> inner);
  ~BufferedStream() noexcept(false);
  KJ_DISALLOW_COPY(BufferedStream);

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override;
  kj::Promise<void> write(const void* buffer, size_t size) override;
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override;
  kj::Promise<void> whenWriteDisconnected() override;
  void shutdownWrite() override;
  void abortRead() override;
  void getsockopt(int level, int option, void* value, kj::uint* length) override;
  void setsockopt(int level, int option, const void* value, kj::uint length) override;
  void getsockname(struct sockaddr* addr, kj::uint* length) override;
  void getpeername(struct sockaddr* addr, kj::uint* length) override;
  kj::Maybe<int> getFd() const override;

private:
  kj::Promise<size_t> readMore(kj::byte* out, size_t minBytes, size_t maxBytes, size_t done);
  void scheduleSend();
  void send();
  void sent();
  void taskFailed(kj::Exception&& exception) override;

  kj::Own<kj::AsyncIoStream> inner;

  kj::Array<kj::byte> readBuffer;
  size_t readBegin = 0;
  size_t readEnd = 0;

  // Bytes gathered since the last send started, and the bytes of the send in progress.
  kj::Vector<kj::byte> pending;
  kj::Vector<kj::byte> sending;
  bool sendScheduled = false;
  bool sendInProgress = false;
  bool shutdownRequested = false;
  kj::Maybe<kj::Exception> failure;
  // Writes waiting for the pending bytes to fall below MAX_PENDING_BYTES.
  kj::Vector<kj::Own<kj::PromiseFulfiller<void>>> blockedWriters;
  // The scheduled and running sends. Last: destroyed (cancelled) first.
  kj::TaskSet tasks;
};

// Wraps `stream` in a BufferedStream.
kj::Own<kj::AsyncIoStream> bufferStream(kj::Own<kj::AsyncIoStream> stream);

}  // namespace payhost::host
