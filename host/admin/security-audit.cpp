#include "host/admin/security-audit.h"

#include <tuple>
#include <vector>

namespace payhost::host {

bool SecurityAudit::Key::operator<(const Key& other) const {
  return std::tie(action, actor, outcome, reason) <
         std::tie(other.action, other.actor, other.outcome, other.reason);
}

bool SecurityAudit::recordAt(Clock::time_point now, kj::StringPtr action, kj::StringPtr actor,
                             kj::StringPtr outcome, kj::StringPtr reason, kj::StringPtr detail) {
  uint64_t carried = 0;
  kj::StringPtr keyActor = actor;
  {
    auto locked = state.lockExclusive();
    if (locked->recordsInWindow == 0 || now - locked->windowStart >= options.window) {
      locked->windowStart = now;
      locked->recordsInWindow = 0;
    }
    Key key{action.cStr(), actor.cStr(), outcome.cStr(), reason.cStr()};
    auto it = locked->entries.find(key);
    if (it == locked->entries.end() && locked->entries.size() >= options.maxKeys) {
      // Forget keys with nothing to report, then share one key per action and reason.
      for (auto i = locked->entries.begin(); i != locked->entries.end();) {
        if (i->second.suppressed == 0 && now - i->second.last >= options.window) {
          i = locked->entries.erase(i);
        } else {
          ++i;
        }
      }
      if (locked->entries.size() >= options.maxKeys) {
        key = Key{key.action, std::string(1, '*'), key.outcome, key.reason};
        keyActor = "*";
        it = locked->entries.find(key);
      }
    }
    if (it == locked->entries.end()) it = locked->entries.emplace(key, Entry()).first;
    auto& entry = it->second;
    bool throttled = entry.recorded && now - entry.last < options.window;
    if (throttled || locked->recordsInWindow >= options.maxRecordsPerWindow) {
      ++entry.suppressed;
      ++locked->suppressedTotal;
      return false;
    }
    carried = entry.suppressed;
    entry.suppressed = 0;
    entry.recorded = true;
    entry.last = now;
    ++locked->recordsInWindow;
  }
  auto text = carried == 0 ? kj::str(reason, ": ", detail)
                           : kj::str(reason, ": ", detail, " (", carried,
                                     " more like it suppressed since the previous record)");
  log.record(action, keyActor, outcome, text);
  return true;
}

size_t SecurityAudit::flush() {
  struct Pending {
    Key key;
    uint64_t count;
  };
  std::vector<Pending> pending;
  {
    auto locked = state.lockExclusive();
    for (auto& [key, entry] : locked->entries) {
      if (entry.suppressed > 0) pending.push_back({key, entry.suppressed});
    }
    locked->entries.clear();
    locked->recordsInWindow = 0;
  }
  // One record per key up to the per-window cap; the rest one per action, so a shutdown after a
  // flood from many addresses costs no more writes than a window does.
  size_t written = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> rest;  // action: keys, events
  for (auto& item : pending) {
    if (written < options.maxRecordsPerWindow) {
      auto text = kj::str(item.key.reason.c_str(), ": ", item.count,
                          " more like it suppressed since the previous record (summary)");
      log.record(item.key.action.c_str(), item.key.actor.c_str(), item.key.outcome.c_str(), text);
      ++written;
    } else {
      auto& [keys, events] = rest[item.key.action];
      ++keys;
      events += item.count;
    }
  }
  for (auto& [action, counts] : rest) {
    auto text = kj::str("summary: ", counts.second, " more suppressed events from ", counts.first,
                        " other actors or reasons");
    log.record(action.c_str(), "*", "refused", text);
    ++written;
  }
  return written;
}

}  // namespace payhost::host
