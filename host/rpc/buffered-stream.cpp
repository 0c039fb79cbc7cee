#include "host/rpc/buffered-stream.h"

#include <kj/debug.h>

#include <cstring>
#include <utility>

namespace payhost::host {

BufferedStream::BufferedStream(kj::Own<kj::AsyncIoStream> inner)
    : inner(kj::mv(inner)), readBuffer(kj::heapArray<kj::byte>(READ_BUFFER_BYTES)), tasks(*this) {}

BufferedStream::~BufferedStream() noexcept(false) {
  for (auto& writer : blockedWriters) {
    writer->reject(KJ_EXCEPTION(DISCONNECTED, "stream destroyed with writes pending"));
  }
}

kj::Promise<size_t> BufferedStream::tryRead(void* buffer, size_t minBytes, size_t maxBytes) {
  return readMore(static_cast<kj::byte*>(buffer), minBytes, maxBytes, 0);
}

kj::Promise<size_t> BufferedStream::readMore(kj::byte* out, size_t minBytes, size_t maxBytes,
                                             size_t done) {
  size_t n = kj::min(readEnd - readBegin, maxBytes - done);
  if (n > 0) {
    memcpy(out + done, readBuffer.begin() + readBegin, n);
    readBegin += n;
    done += n;
  }
  if (done >= minBytes) return done;
  // The buffer is empty and the caller needs more.
  readBegin = readEnd = 0;
  size_t wanted = maxBytes - done;
  if (wanted >= readBuffer.size()) {
    // A large read goes straight to the caller's memory.
    return inner->tryRead(out + done, minBytes - done, wanted).then([done](size_t got) {
      return done + got;
    });
  }
  return inner->tryRead(readBuffer.begin(), 1, readBuffer.size())
      .then([this, out, minBytes, maxBytes, done](size_t got) -> kj::Promise<size_t> {
        if (got == 0) return done;  // End of stream.
        readEnd = got;
        return readMore(out, minBytes, maxBytes, done);
      });
}

kj::Promise<void> BufferedStream::write(const void* buffer, size_t size) {
  kj::ArrayPtr<const kj::byte> piece(static_cast<const kj::byte*>(buffer), size);
  return write(kj::arrayPtr(&piece, 1));
}

kj::Promise<void> BufferedStream::write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) {
  KJ_IF_MAYBE (exception, failure) {
    return kj::cp(*exception);
  }
  KJ_REQUIRE(!shutdownRequested, "write after shutdownWrite()");
  for (auto piece : pieces) {
    pending.addAll(piece);
  }
  if (pending.size() >= FLUSH_BYTES) {
    send();
  } else {
    scheduleSend();
  }
  if (pending.size() + sending.size() <= MAX_PENDING_BYTES) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  blockedWriters.add(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

void BufferedStream::scheduleSend() {
  if (sendScheduled || sendInProgress) return;  // A finished send starts the next one.
  sendScheduled = true;
  tasks.add(kj::evalLast([this]() {
    sendScheduled = false;
    send();
  }));
}

void BufferedStream::send() {
  if (sendInProgress || pending.size() == 0 || failure != nullptr) return;
  sendInProgress = true;
  std::swap(pending, sending);
  pending.clear();
  // kj's socket write may throw at once (EPIPE) instead of rejecting: evalNow makes it one path.
  tasks.add(kj::evalNow([this]() { return inner->write(sending.begin(), sending.size()); })
                .then([this]() { sent(); },
                      [this](kj::Exception&& exception) {
                        sendInProgress = false;
                        sending.clear();
                        pending.clear();
                        for (auto& writer : blockedWriters) {
                          writer->reject(kj::cp(exception));
                        }
                        blockedWriters.clear();
                        failure = kj::mv(exception);
                      }));
}

void BufferedStream::sent() {
  sendInProgress = false;
  sending.clear();
  if (pending.size() <= MAX_PENDING_BYTES && blockedWriters.size() > 0) {
    for (auto& writer : blockedWriters) {
      writer->fulfill();
    }
    blockedWriters.clear();
  }
  if (pending.size() > 0) {
    // What was written meanwhile goes at once: the loop already had its turn.
    send();
  } else if (shutdownRequested) {
    // The peer may be gone already; the caller asked for the shutdown long ago and cannot learn.
    kj::runCatchingExceptions([this]() { inner->shutdownWrite(); });
  }
}

void BufferedStream::taskFailed(kj::Exception&& exception) {
  // The send's failure is caught in send(); nothing else can fail here.
  KJ_LOG(ERROR, "buffered stream task failed", exception);
}

kj::Promise<void> BufferedStream::whenWriteDisconnected() {
  return inner->whenWriteDisconnected();
}

void BufferedStream::shutdownWrite() {
  shutdownRequested = true;
  if (!sendInProgress && pending.size() == 0) {
    inner->shutdownWrite();
  } else {
    send();
  }
}

void BufferedStream::abortRead() {
  inner->abortRead();
}

void BufferedStream::getsockopt(int level, int option, void* value, kj::uint* length) {
  inner->getsockopt(level, option, value, length);
}

void BufferedStream::setsockopt(int level, int option, const void* value, kj::uint length) {
  inner->setsockopt(level, option, value, length);
}

void BufferedStream::getsockname(struct sockaddr* addr, kj::uint* length) {
  inner->getsockname(addr, length);
}

void BufferedStream::getpeername(struct sockaddr* addr, kj::uint* length) {
  inner->getpeername(addr, length);
}

kj::Maybe<int> BufferedStream::getFd() const {
  return inner->getFd();
}

kj::Own<kj::AsyncIoStream> bufferStream(kj::Own<kj::AsyncIoStream> stream) {
  return kj::heap<BufferedStream>(kj::mv(stream));
}

}  // namespace payhost::host
