#include "host/admin/audit-log.h"

#include "host/util/errors.h"

#include <capnp/compat/json.h>
#include <kj/debug.h>
#include <kj/encoding.h>
#include <kj/time.h>

#include <openssl/evp.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace payhost::host {

namespace {

kj::String sha256Hex(kj::StringPtr a, kj::StringPtr b) {
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  KJ_ASSERT(context != nullptr);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  bool ok = EVP_DigestInit_ex(context, EVP_sha256(), nullptr) == 1 &&
            EVP_DigestUpdate(context, a.begin(), a.size()) == 1 &&
            EVP_DigestUpdate(context, "\n", 1) == 1 &&
            EVP_DigestUpdate(context, b.begin(), b.size()) == 1 &&
            EVP_DigestFinal_ex(context, digest, &size) == 1;
  EVP_MD_CTX_free(context);
  KJ_ASSERT(ok, "SHA-256 failed");
  return kj::encodeHex(kj::arrayPtr(digest, size));
}

// The hash of an entry: over its predecessor's hash and its JSON with `hash` empty.
kj::String hashOf(capnp::JsonCodec& json, schema::AuditEntry::Reader entry) {
  capnp::MallocMessageBuilder copy;
  copy.setRoot(entry);
  auto root = copy.getRoot<schema::AuditEntry>();
  root.setHash("");
  return sha256Hex(entry.getPreviousHash(), json.encode(root.asReader()));
}

// A copy of `entry` in a message sized to it, to keep in memory: a default builder reserves
// 8 KiB, which over hundreds of deploys added up to megabytes.
kj::Own<capnp::MallocMessageBuilder> compactCopy(schema::AuditEntry::Reader entry) {
  auto words = entry.totalSize().wordCount + 1;
  auto copy = kj::heap<capnp::MallocMessageBuilder>(words, capnp::AllocationStrategy::FIXED_SIZE);
  copy->setRoot(entry);
  return copy;
}

}  // namespace

AuditLog::AuditLog(kj::StringPtr path) : path_(kj::heapString(path)) {
  std::error_code error;
  std::filesystem::create_directories(std::filesystem::path(path.cStr()).parent_path(), error);
  KJ_IF_MAYBE (problem, verify(path)) {
    PAYHOST_FAIL(FAILED, *problem);
  }
  capnp::JsonCodec json;
  std::ifstream in(path.cStr());
  std::string line;
  auto locked = state.lockExclusive();
  locked->lastHash = kj::heapString("");
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    capnp::MallocMessageBuilder message;
    json.decode(kj::StringPtr(line.c_str(), line.size()), message.initRoot<schema::AuditEntry>());
    auto entry = message.getRoot<schema::AuditEntry>().asReader();
    locked->lastHash = kj::heapString(entry.getHash());
    locked->entries.add(compactCopy(entry));
  }
  int raw = open(path.cStr(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (raw < 0) PAYHOST_FAIL(FAILED, path, ": cannot open the audit log: ", strerror(errno));
  fd = kj::AutoCloseFd(raw);
}

void AuditLog::record(kj::StringPtr action, kj::StringPtr actor, kj::StringPtr outcome,
                      kj::StringPtr detail) {
  AuditRecord entry{action, "", "", "", "", detail};
  entry.actor = actor;
  entry.outcome = outcome;
  append(entry);
}

void AuditLog::append(const AuditRecord& record) {
  auto locked = state.lockExclusive();
  capnp::MallocMessageBuilder message;
  auto entry = message.initRoot<schema::AuditEntry>();
  entry.setSequence(locked->entries.size() + 1);
  entry.setTimeUnixMs((kj::systemPreciseCalendarClock().now() - kj::UNIX_EPOCH) / kj::MILLISECONDS);
  entry.setAction(record.action);
  entry.setPlugin(record.plugin);
  entry.setFromVersion(record.fromVersion);
  entry.setToVersion(record.toVersion);
  entry.setPackage(record.package);
  entry.setDetail(record.detail);
  entry.setPreviousHash(locked->lastHash);
  entry.setActor(record.actor.size() == 0 ? "payhostd" : record.actor);
  entry.setOutcome(record.outcome.size() == 0 ? "ok" : record.outcome);
  capnp::JsonCodec json;
  auto hash = hashOf(json, entry.asReader());
  entry.setHash(hash);
  auto line = kj::str(json.encode(entry.asReader()), "\n");
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = write(fd, line.begin() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) PAYHOST_FAIL(FAILED, path_, ": cannot write the audit log: ", strerror(errno));
    done += n;
  }
  KJ_SYSCALL(fdatasync(fd), path_);
  writeHead(entry.getSequence(), hash);
  locked->lastHash = kj::mv(hash);
  locked->entries.add(compactCopy(entry.asReader()));
}

kj::String AuditLog::headPath(kj::StringPtr path) {
  return kj::str(path, ".head");
}

void AuditLog::writeHead(uint64_t sequence, kj::StringPtr hash) {
  auto target = headPath(path_);
  auto temporary = kj::str(target, ".tmp");
  int out = open(temporary.cStr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) PAYHOST_FAIL(FAILED, temporary, ": cannot write the audit head: ", strerror(errno));
  kj::AutoCloseFd owned(out);
  auto text = kj::str("sequence ", sequence, "\nhash ", hash, "\n");
  kj::FdOutputStream(out).write(text.begin(), text.size());
  KJ_SYSCALL(fdatasync(out), temporary);
  if (rename(temporary.cStr(), target.cStr()) != 0) {
    PAYHOST_FAIL(FAILED, target, ": cannot store the audit head: ", strerror(errno));
  }
}

schema::AuditEntry::Reader AuditLog::operator[](size_t i) const {
  auto locked = state.lockShared();
  return const_cast<capnp::MallocMessageBuilder&>(*locked->entries[i])
      .getRoot<schema::AuditEntry>()
      .asReader();
}

namespace {

struct Head {
  uint64_t sequence = 0;
  kj::String hash;
};

// The head file's "sequence N\nhash H\n"; null when there is none, a message when unreadable.
kj::Maybe<Head> readHead(kj::StringPtr headFile, kj::Maybe<kj::String>& problem) {
  std::ifstream in(headFile.cStr());
  if (!in) return nullptr;
  std::string word, hash;
  uint64_t sequence = 0;
  if (!(in >> word) || word != "sequence" || !(in >> sequence) || !(in >> word) || word != "hash" ||
      !(in >> hash) || hash.size() != 64) {
    problem = kj::str(headFile, ": unreadable audit head (expected 'sequence N' and 'hash H')");
    return nullptr;
  }
  return Head{sequence, kj::heapString(hash.c_str())};
}

}  // namespace

uint64_t AuditLog::countEntries(kj::StringPtr path) {
  std::ifstream in(path.cStr());
  std::string line;
  uint64_t count = 0;
  while (std::getline(in, line))
    count += line.empty() ? 0 : 1;
  return count;
}

kj::Maybe<kj::String> AuditLog::verify(kj::StringPtr path) {
  kj::Maybe<kj::String> headProblem;
  auto head = readHead(headPath(path), headProblem);
  KJ_IF_MAYBE (problem, headProblem) {
    return kj::mv(*problem);
  }
  std::ifstream in(path.cStr());
  if (!in) {
    // No log yet: nothing to break, unless a head says there was one.
    KJ_IF_MAYBE (h, head) {
      return kj::str(path, ": missing, but ", headPath(path), " records ", h->sequence,
                     " entries (the log was deleted)");
    }
    return nullptr;
  }
  capnp::JsonCodec json;
  std::string line;
  kj::String previous = kj::heapString("");
  uint64_t number = 0;
  uint64_t expectedSequence = 1;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    capnp::MallocMessageBuilder message;
    try {
      json.decode(kj::StringPtr(line.c_str(), line.size()), message.initRoot<schema::AuditEntry>());
    } catch (const kj::Exception& e) {
      return kj::str(path, ":", number, ": unreadable audit entry: ", e.getDescription());
    }
    auto entry = message.getRoot<schema::AuditEntry>().asReader();
    if (entry.getSequence() != expectedSequence) {
      return kj::str(path, ":", number, ": sequence ", entry.getSequence(), ", expected ",
                     expectedSequence, " (an entry was removed or reordered)");
    }
    if (entry.getPreviousHash() != previous) {
      return kj::str(path, ":", number, ": does not follow the entry before it (an entry was ",
                     "removed, reordered or edited)");
    }
    if (hashOf(json, entry) != entry.getHash()) {
      return kj::str(path, ":", number, ": hash mismatch (the entry was edited)");
    }
    KJ_IF_MAYBE (h, head) {
      if (entry.getSequence() == h->sequence && entry.getHash() != h->hash) {
        return kj::str(path, ":", number, ": sequence ", h->sequence, " is not the entry ",
                       headPath(path), " records (the log was rewritten from here)");
      }
    }
    previous = kj::heapString(entry.getHash());
    ++expectedSequence;
  }
  KJ_IF_MAYBE (h, head) {
    // The head may lag the log by the entry being written when payhostd died, never lead it.
    if (expectedSequence - 1 < h->sequence) {
      return kj::str(path, ": ends at sequence ", expectedSequence - 1, " but ", headPath(path),
                     " records sequence ", h->sequence, " (entries were cut from the end)");
    }
  }
  return nullptr;
}

}  // namespace payhost::host
