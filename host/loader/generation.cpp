#include "host/loader/generation.h"

#include <kj/time.h>

namespace payhost::host {

Generation::Generation(uint64_t id, kj::Own<PluginLibrary> library, Config config)
    : library_(kj::mv(library)), id_(id), config_(kj::mv(config)) {
  auto& descriptor = library_->descriptor();
  name_ = kj::heapString(descriptor.name);
  version_ = kj::heapString(descriptor.version);
  auto builder = kj::heapArrayBuilder<ServiceDeclaration>(descriptor.service_count);
  for (size_t i = 0; i < descriptor.service_count; ++i) {
    auto& service = descriptor.services[i];
    builder.add(ServiceDeclaration{kj::heapString(service.name),
                                   kj::heapString(service.interface_name), service.interface_id});
  }
  services_ = builder.finish();
  loadedAtUnixMs_ = (kj::systemPreciseCalendarClock().now() - kj::UNIX_EPOCH) / kj::MILLISECONDS;
}

Generation::~Generation() noexcept = default;

}  // namespace payhost::host
