// The Cap'n Proto reader limits payhostd reads client messages under, in one place: the daemon's
// shards use them with the config's `[limits]`, the fuzz targets (tests/fuzz) with its defaults.
// Header only, so a target that links no host library can use it.

#pragma once

#include "host/config/daemon-config.h"

#include <capnp/message.h>
#include <kj/common.h>

namespace payhost::host {

// The Cap'n Proto reader limits client messages are read under: `limits.traversal_limit_words`
// and `limits.nesting_limit`, the traversal limit capped by `limits.max_message_bytes` (it is also
// what Cap'n Proto checks a message's announced size against). Called with no argument it gives
// the defaults of `[limits]`, which the fuzz targets use.
inline capnp::ReaderOptions clientReaderOptions(const LimitsConfig& limits = LimitsConfig()) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords =
      kj::min(limits.traversalLimitWords, limits.maxMessageBytes / sizeof(capnp::word));
  options.nestingLimit = static_cast<int>(limits.nestingLimit);
  return options;
}

}  // namespace payhost::host
