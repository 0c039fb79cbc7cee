#include "host/outbound/remote-connect.h"

#include "host/util/errors.h"

#include <kj/debug.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

namespace payhost::host {

kj::String networkAddress(const RemoteEntry& remote) {
  if (remote.address.startsWith("tcp:")) return kj::heapString(remote.address.slice(4));
  return kj::heapString(remote.address);
}

kj::Promise<kj::Own<kj::AsyncIoStream>> connectToRemote(kj::Network& network, kj::Timer& timer,
                                                        const RemoteEntry& remote) {
  auto connecting = network.parseAddress(networkAddress(remote))
                        .then([](kj::Own<kj::NetworkAddress> address) {
                          return address->connect().attach(kj::mv(address));
                        })
                        .then([](kj::Own<kj::AsyncIoStream> stream) {
                          KJ_IF_MAYBE (fd, stream->getFd()) {
                            int one = 1;
                            // Fails harmlessly on unix sockets. Calls are small and latency-bound.
                            setsockopt(*fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                          }
                          return kj::mv(stream);
                        });
  auto deadline =
      timer.afterDelay(remote.connectTimeout).then([&remote]() -> kj::Own<kj::AsyncIoStream> {
        PAYHOST_FAIL(DISCONNECTED, "connect timed out after ",
                     remote.connectTimeout / kj::MILLISECONDS, " ms (connect_timeout_ms)");
      });
  return connecting.exclusiveJoin(kj::mv(deadline))
      .catch_([](kj::Exception&& e) -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
        // A refused or unreachable peer is a lost peer to the caller, whatever the syscall said.
        return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                             kj::heapString(e.getDescription()));
      });
}

}  // namespace payhost::host
