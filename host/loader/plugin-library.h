// One plugin package file loaded into the process: the bytes read once, copied into a sealed
// memfd, loaded from that descriptor with Boost.DLL, and its descriptor checked.
//
// Loading from a memfd means the bytes checked are the bytes loaded (the file may change on disk
// afterwards), and that each load has its own path: dlopen() of a path already loaded would hand
// back the old library.
//
// Ownership: the library stays mapped while this object lives; `unload()` closes it only when
// the plugin reports no live objects. Control thread only.

#pragma once

#include <payhost/abi.h>

#include <kj/common.h>
#include <kj/io.h>
#include <kj/memory.h>
#include <kj/string.h>

#include <cstdint>

namespace payhost::host {

class PluginLibrary {
public:
  // Loads the plugin file at `path`. `loadId` makes the memfd's name unique
  // ("payhost:<file>:<loadId>"). Throws a kj::Exception with one message naming the file and
  // what is wrong: unreadable, not an ELF shared library for this machine, dlopen failure,
  // no entry symbol, or a descriptor refused by `describeIncompatibility` (both sides named).
  static kj::Own<PluginLibrary> load(kj::StringPtr path, uint64_t loadId);

  ~PluginLibrary() noexcept;
  KJ_DISALLOW_COPY(PluginLibrary);

  const payhost_plugin_v1_descriptor& descriptor() const { return *descriptor_; }
  kj::StringPtr path() const { return path_; }
  // Hex SHA-256 of the bytes loaded.
  kj::StringPtr sha256() const { return sha256_; }
  // The name this load has in /proc/self/maps ("/memfd:payhost:card-processor.so:3").
  kj::StringPtr mappedName() const { return mappedName_; }
  uint64_t liveObjects() const { return descriptor_->live_objects(); }

  // Writes the bytes that were loaded to `path` (through a temporary file and a rename, fsynced),
  // unless a file is already there. Used to keep packages for rollback.
  void saveCopy(kj::StringPtr path) const;

  enum class UnloadResult {
    // dlclose() ran and the library's mappings are gone.
    UNMAPPED,
    // dlclose() ran but the library is still mapped (e.g. it has STB_GNU_UNIQUE symbols or
    // thread-local destructors pending).
    STILL_MAPPED,
    // Objects the plugin made are still alive; the library was left loaded (parked) so they
    // cannot crash the host.
    PARKED,
  };

  // Closes the library if no object of the plugin is alive. The descriptor must not be used
  // afterwards. Calling it again does nothing and returns the first result.
  UnloadResult unload();

private:
  struct Token {};
  struct Library;

public:
  // Use `load()`.
  explicit PluginLibrary(Token);

private:
  kj::String path_;
  kj::String sha256_;
  kj::String mappedName_;
  kj::AutoCloseFd memfd;
  kj::Own<Library> library;
  const payhost_plugin_v1_descriptor* descriptor_ = nullptr;
  kj::Maybe<UnloadResult> unloaded;
};

// Whether any mapping in /proc/self/maps names `name` (as a path or memfd name).
bool isMapped(kj::StringPtr name);

kj::StringPtr unloadResultName(PluginLibrary::UnloadResult result);

}  // namespace payhost::host
