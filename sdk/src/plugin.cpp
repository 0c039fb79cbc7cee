#include <payhost/plugin.h>

namespace payhost {

kj::Promise<void> Plugin::ready() {
  return kj::READY_NOW;
}

}  // namespace payhost
