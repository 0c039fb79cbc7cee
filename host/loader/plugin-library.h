// One plugin package file loaded into the process: the bytes read once, copied into a sealed
// memfd, loaded from that descriptor with Boost.DLL, and its descriptor checked.
//
// Loading from a memfd means the bytes checked are the bytes loaded (the file may change on disk
// afterwards), and that each load has its own path: dlopen() of a path already loaded would hand
// back the old library. The signature (`<file>.sig`, see package-signature.h) is checked against
// the sealed memfd's own bytes, before dlopen() runs any of the plugin's code.
//
// Ownership: the library stays mapped while this object lives; `unload()` closes it only when
// the plugin reports no live objects. Control thread only.

#pragma once

#include "host/loader/package-signature.h"

#include <payhost/abi.h>

#include <kj/common.h>
#include <kj/function.h>
#include <kj/io.h>
#include <kj/memory.h>
#include <kj/string.h>

#include <cstdint>

namespace payhost::host {

// What a load requires of a package's signature. Borrowed for the duration of `load()`.
struct LoadPolicy {
  // Keys whose signatures are accepted. Null accepts no signature.
  const TrustedKeys* trusted = nullptr;
  // Development only: a package without a signature file is loaded (the caller must log a
  // warning: `PluginLibrary::signer()` is null). A signature file that is there is still checked.
  bool allowUnsigned = false;
  // Called with the verified manifest before any of the plugin's code runs (e.g. to refuse a
  // downgrade); it refuses the load by throwing.
  kj::Maybe<kj::Function<void(const PackageManifest&)>&> vetManifest;
  // Called after the bytes were copied to the memfd and verified, just before dlopen().
  kj::Maybe<kj::Function<void()>&> beforeDlopenForTest;
};

class PluginLibrary {
public:
  // Loads the plugin file at `path` under `policy`. `loadId` makes the memfd's name unique
  // ("payhost:<file>:<loadId>"). Throws a kj::Exception with one message naming the file and
  // what is wrong: unreadable, not an ELF shared library for this machine, unsigned, signed by
  // a key not trusted, a bad signature, bytes not the ones signed, a refused manifest, dlopen
  // failure, no entry symbol, a descriptor refused by `describeIncompatibility`, or a descriptor
  // whose name or version is not the signed one (both sides named).
  static kj::Own<PluginLibrary> load(kj::StringPtr path, uint64_t loadId, const LoadPolicy& policy);
  // Loads without any signature check: only for tools that load a plugin outside payhostd (the
  // benchmarks' bare server). payhostd always passes its policy.
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

  // The trusted key file that signed the package; null when it was loaded unsigned.
  kj::Maybe<kj::StringPtr> signer() const { return signer_; }
  // The signature file's text; empty when unsigned.
  kj::StringPtr signature() const { return signature_; }

  // Writes the bytes that were loaded to `path` (through a temporary file and a rename, fsynced),
  // and the signature to `path` + ".sig", unless a file is already there. Used to keep packages
  // for rollback.
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
  // `policy` null: no signature check.
  static kj::Own<PluginLibrary> load(kj::StringPtr path, uint64_t loadId, const LoadPolicy* policy);

public:
  // Use `load()`.
  explicit PluginLibrary(Token);

private:
  kj::String path_;
  kj::String sha256_;
  kj::String mappedName_;
  kj::Maybe<kj::String> signer_;
  kj::String signature_;
  kj::AutoCloseFd memfd;
  kj::Own<Library> library;
  const payhost_plugin_v1_descriptor* descriptor_ = nullptr;
  kj::Maybe<UnloadResult> unloaded;
};

// Whether any mapping in /proc/self/maps names `name` (as a path or memfd name).
bool isMapped(kj::StringPtr name);

kj::StringPtr unloadResultName(PluginLibrary::UnloadResult result);

}  // namespace payhost::host
