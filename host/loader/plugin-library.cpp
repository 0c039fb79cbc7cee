#include "host/loader/plugin-library.h"

#include "host/util/errors.h"

#include <payhost/compat.h>

#include <kj/debug.h>
#include <kj/encoding.h>
#include <kj/io.h>

#include <boost/dll/shared_library.hpp>
#include <openssl/evp.h>

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

namespace payhost::host {

struct PluginLibrary::Library {
  boost::dll::shared_library library;
};

namespace {

// Larger plugins are refused: the whole file is read into memory once.
constexpr size_t MAX_PLUGIN_BYTES = 256u << 20;

kj::Array<kj::byte> readWholeFile(kj::StringPtr path) {
  int fd = open(path.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) PAYHOST_FAIL(FAILED, path, ": cannot open plugin file: ", strerror(errno));
  kj::AutoCloseFd owned(fd);
  struct stat info;
  KJ_SYSCALL(fstat(fd, &info), path);
  if (!S_ISREG(info.st_mode)) PAYHOST_FAIL(FAILED, path, ": plugin file is not a regular file");
  if (static_cast<size_t>(info.st_size) > MAX_PLUGIN_BYTES) {
    PAYHOST_FAIL(FAILED, path, ": plugin file is ", info.st_size, " bytes; the limit is ",
                 MAX_PLUGIN_BYTES);
  }
  auto bytes = kj::heapArray<kj::byte>(info.st_size);
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = read(fd, bytes.begin() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) PAYHOST_FAIL(FAILED, path, ": cannot read plugin file: ", strerror(errno));
    if (n == 0) PAYHOST_FAIL(FAILED, path, ": plugin file shrank while being read");
    done += n;
  }
  return bytes;
}

void checkElf(kj::StringPtr path, kj::ArrayPtr<const kj::byte> bytes) {
  if (bytes.size() < sizeof(Elf64_Ehdr) || memcmp(bytes.begin(), ELFMAG, SELFMAG) != 0) {
    PAYHOST_FAIL(FAILED, path, ": not a plugin: the file is not an ELF shared library");
  }
  Elf64_Ehdr header;
  memcpy(&header, bytes.begin(), sizeof(header));
  if (header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_machine != EM_X86_64) {
    PAYHOST_FAIL(FAILED, path, ": not a plugin for this machine: ELF class ",
                 header.e_ident[EI_CLASS], " machine ", header.e_machine,
                 ", host is ELFCLASS64 x86-64 (62)");
  }
  if (header.e_type != ET_DYN) {
    PAYHOST_FAIL(FAILED, path, ": not a plugin: ELF type ", header.e_type,
                 " is not a shared library (ET_DYN)");
  }
}

// The SHA-256 of what the memfd holds now that it is sealed: the bytes dlopen() will map.
kj::String sealedSha256(int memfd, size_t size, kj::StringPtr path) {
  void* mapped = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, memfd, 0);
  if (mapped == MAP_FAILED) PAYHOST_FAIL(FAILED, path, ": cannot map the memfd: ", strerror(errno));
  KJ_DEFER(munmap(mapped, size));
  return sha256Hex(kj::arrayPtr(static_cast<const kj::byte*>(mapped), size));
}

// The signature file beside the plugin; null when there is none.
kj::Maybe<kj::Array<kj::byte>> readSignatureFile(kj::StringPtr signaturePath) {
  int fd = open(signaturePath.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) return nullptr;
  if (fd < 0) PAYHOST_FAIL(FAILED, signaturePath, ": cannot open: ", strerror(errno));
  kj::AutoCloseFd owned(fd);
  // One byte more than allowed, so that a longer file is seen to be too long.
  auto buffer = kj::heapArray<kj::byte>(MAX_SIGNATURE_FILE_BYTES + 1);
  size_t done = 0;
  while (done < buffer.size()) {
    ssize_t n = read(fd, buffer.begin() + done, buffer.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) PAYHOST_FAIL(FAILED, signaturePath, ": cannot read: ", strerror(errno));
    if (n == 0) break;
    done += n;
  }
  return kj::heapArray<kj::byte>(buffer.slice(0, done));
}

kj::StringPtr baseName(kj::StringPtr path) {
  KJ_IF_MAYBE (slash, path.findLast('/')) {
    return path.slice(*slash + 1);
  }
  return path;
}

}  // namespace

kj::StringPtr unloadResultName(PluginLibrary::UnloadResult result) {
  switch (result) {
    case PluginLibrary::UnloadResult::UNMAPPED:
      return "unmapped";
    case PluginLibrary::UnloadResult::STILL_MAPPED:
      return "still-mapped";
    case PluginLibrary::UnloadResult::PARKED:
      return "parked";
  }
  return "unknown";
}

bool isMapped(kj::StringPtr name) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  std::string_view needle(name.cStr(), name.size());
  while (std::getline(maps, line)) {
    auto at = line.find(needle);
    if (at == std::string::npos) continue;
    // A whole name: followed by the end, a space (" (deleted)") or nothing else.
    size_t end = at + needle.size();
    if (end == line.size() || line[end] == ' ') return true;
  }
  return false;
}

kj::Own<PluginLibrary> PluginLibrary::load(kj::StringPtr path, uint64_t loadId) {
  return load(path, loadId, nullptr);
}

kj::Own<PluginLibrary> PluginLibrary::load(kj::StringPtr path, uint64_t loadId,
                                           const LoadPolicy& policy) {
  return load(path, loadId, &policy);
}

kj::Own<PluginLibrary> PluginLibrary::load(kj::StringPtr path, uint64_t loadId,
                                           const LoadPolicy* policy) {
  auto bytes = readWholeFile(path);
  checkElf(path, bytes);

  auto result = kj::heap<PluginLibrary>(Token{});
  result->path_ = kj::heapString(path);

  kj::Maybe<PackageManifest> manifest;
  if (policy != nullptr) {
    auto signaturePath = kj::str(path, SIGNATURE_FILE_SUFFIX);
    KJ_IF_MAYBE (text, readSignatureFile(signaturePath)) {
      manifest = parsePackageSignature(*text, signaturePath);
      result->signature_ = kj::heapString(text->asChars());
    } else if (!policy->allowUnsigned) {
      PAYHOST_FAIL(FAILED, path, ": plugin refused: it is not signed (no ", signaturePath,
                   "; sign it with payhostctl sign, or allow unsigned plugins for development ",
                   "with [security] allow_unsigned = true)");
    }
  }

  auto memfdName = kj::str("payhost:", baseName(path), ":", loadId);
  int memfd = memfd_create(memfdName.cStr(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (memfd < 0) PAYHOST_FAIL(FAILED, path, ": memfd_create failed: ", strerror(errno));
  kj::AutoCloseFd memfdOwner(memfd);
  kj::FdOutputStream(memfd).write(bytes.begin(), bytes.size());
  KJ_SYSCALL(fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL),
             path);
  result->mappedName_ = kj::str("/memfd:", memfdName);
  // From here on only the sealed memfd counts: it is what is hashed, verified and loaded.
  auto size = bytes.size();
  bytes = nullptr;
  result->sha256_ = sealedSha256(memfd, size, path);

  KJ_IF_MAYBE (signed_, manifest) {
    TrustedKeys none;
    auto& signer = verifyPackage(policy->trusted != nullptr ? *policy->trusted : none, *signed_,
                                 result->sha256_, path);
    result->signer_ = kj::heapString(signer.source);
    KJ_IF_MAYBE (vet, policy->vetManifest) {
      (*vet)(*signed_);
    }
  }
  if (policy != nullptr) {
    KJ_IF_MAYBE (hook, policy->beforeDlopenForTest) {
      (*hook)();
    }
  }

  auto library = kj::heap<Library>();
  // On any failure below, `library` is closed while `memfdOwner` is still open, and if glibc
  // keeps it mapped anyway the memfd is never closed: see the end of this function.
  KJ_ON_SCOPE_FAILURE({
    library = nullptr;
    if (isMapped(result->mappedName_)) (void)memfdOwner.release();
  });
  try {
    library->library.load(std::filesystem::path(kj::str("/proc/self/fd/", memfd).cStr()),
                          boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    PAYHOST_FAIL(FAILED, path, ": cannot load plugin: ", e.what(), "");
  }
  if (!library->library.has(PAYHOST_ENTRY_SYMBOL)) {
    PAYHOST_FAIL(FAILED, path, ": not a payhost plugin: no entry symbol '", PAYHOST_ENTRY_SYMBOL,
                 "' (declare the plugin with PAYHOST_PLUGIN from <payhost/plugin.h>)");
  }
  auto entry =
      library->library.get_alias<const payhost_plugin_v1_descriptor*()>(PAYHOST_ENTRY_SYMBOL);
  const payhost_plugin_v1_descriptor* descriptor = entry();
  if (descriptor == nullptr) {
    PAYHOST_FAIL(FAILED, path, ": the plugin's entry returned no descriptor");
  }
  KJ_IF_MAYBE (problem, describeIncompatibility(*descriptor)) {
    PAYHOST_FAIL(FAILED, path, ": plugin refused: ", *problem);
  }
  KJ_IF_MAYBE (signed_, manifest) {
    // The descriptor is the plugin's own word; the signature binds the name and version too.
    if (signed_->name != descriptor->name || signed_->version != descriptor->version) {
      PAYHOST_FAIL(FAILED, path, ": plugin refused: its descriptor says ", descriptor->name, " ",
                   descriptor->version, ", the signature says ", signed_->name, " ",
                   signed_->version);
    }
  }
  result->library = kj::mv(library);
  result->descriptor_ = descriptor;
  // Kept open while the library is loaded: glibc recognises an already-loaded library by the
  // path it was opened with, so a reused descriptor number would hand back the wrong library.
  result->memfd = kj::mv(memfdOwner);
  return result;
}

PluginLibrary::PluginLibrary(Token) {}

void PluginLibrary::saveCopy(kj::StringPtr target) const {
  if (signature_.size() > 0) {
    // Written (again) even when the package is already there: it may have been kept from an
    // unsigned load, and a rollback to it must find the signature that was verified. First, so a
    // package copy is never there without it.
    auto signatureTarget = kj::str(target, SIGNATURE_FILE_SUFFIX);
    auto signatureTemporary = kj::str(signatureTarget, ".tmp.", getpid());
    int sig = open(signatureTemporary.cStr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (sig < 0) {
      PAYHOST_FAIL(FAILED, signatureTemporary, ": cannot write signature copy: ", strerror(errno));
    }
    kj::AutoCloseFd ownedSignature(sig);
    kj::FdOutputStream(sig).write(signature_.begin(), signature_.size());
    KJ_SYSCALL(fsync(sig), signatureTemporary);
    if (rename(signatureTemporary.cStr(), signatureTarget.cStr()) != 0) {
      PAYHOST_FAIL(FAILED, signatureTarget, ": cannot store signature copy: ", strerror(errno));
    }
  }
  if (access(target.cStr(), F_OK) == 0) return;
  auto temporary = kj::str(target, ".tmp.", getpid());
  int out = open(temporary.cStr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) PAYHOST_FAIL(FAILED, temporary, ": cannot write package copy: ", strerror(errno));
  kj::AutoCloseFd owned(out);
  struct stat info;
  KJ_SYSCALL(fstat(memfd, &info));
  char buffer[65536];
  off_t offset = 0;
  while (offset < info.st_size) {
    ssize_t n = pread(memfd, buffer, sizeof(buffer), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) PAYHOST_FAIL(FAILED, path_, ": cannot read the loaded bytes back");
    kj::FdOutputStream(out).write(buffer, n);
    offset += n;
  }
  KJ_SYSCALL(fsync(out), temporary);
  if (rename(temporary.cStr(), target.cStr()) != 0) {
    PAYHOST_FAIL(FAILED, target, ": cannot store package copy: ", strerror(errno));
  }
}

PluginLibrary::~PluginLibrary() noexcept {
  if (library.get() != nullptr && unloaded == nullptr) unload();
}

PluginLibrary::UnloadResult PluginLibrary::unload() {
  KJ_IF_MAYBE (result, unloaded) {
    return *result;
  }
  UnloadResult result;
  if (descriptor_ != nullptr && descriptor_->live_objects() != 0) {
    // Deliberately leaked, with its descriptor: closing would unmap code that live objects
    // still point into.
    new kj::Own<Library>(kj::mv(library));
    (void)memfd.release();
    result = UnloadResult::PARKED;
  } else {
    library = nullptr;
    if (isMapped(mappedName_)) {
      // glibc still knows the library by the path it was opened with (/proc/self/fd/<memfd>):
      // the memfd stays open for good so that no later load is given this number and this code.
      (void)memfd.release();
      result = UnloadResult::STILL_MAPPED;
    } else {
      memfd = nullptr;
      result = UnloadResult::UNMAPPED;
    }
  }
  descriptor_ = nullptr;
  unloaded = result;
  return result;
}

}  // namespace payhost::host
