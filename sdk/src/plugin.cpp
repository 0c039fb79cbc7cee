#include <payhost/plugin.h>

#include <capnp/serialize.h>

namespace payhost {

kj::Promise<void> Plugin::ready() {
  return kj::READY_NOW;
}

kj::Maybe<kj::Array<capnp::word>> Plugin::exportState() {
  return nullptr;
}

void Plugin::importState(capnp::AnyPointer::Reader) {}

kj::Array<capnp::word> encodeState(capnp::MessageBuilder& message) {
  return capnp::messageToFlatArray(message);
}

}  // namespace payhost
