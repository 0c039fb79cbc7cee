#include "host/util/tls-files.h"

#include "host/util/errors.h"

#include <kj/debug.h>
#include <kj/io.h>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace payhost::host {

void checkPrivateKeyFile(kj::StringPtr path, kj::StringPtr what) {
  struct stat info;
  if (stat(path.cStr(), &info) != 0) {
    auto reason = std::generic_category().message(errno);
    PAYHOST_FAIL(FAILED, what, " ", path, ": cannot read: ", reason.c_str());
  }
  if (!S_ISREG(info.st_mode)) PAYHOST_FAIL(FAILED, what, " ", path, ": not a regular file");
  if ((info.st_mode & (S_IRWXO | S_IWGRP)) != 0) {
    PAYHOST_FAIL(FAILED, what, " ", path, ": mode 0", (info.st_mode >> 6) & 7,
                 (info.st_mode >> 3) & 7, info.st_mode & 7,
                 " lets other users read or replace the private key; refusing to use it (chmod "
                 "600 it, or 640 for a group)");
  }
}

kj::String readPemFile(kj::StringPtr path, kj::StringPtr what) {
  int fd;
  do {
    fd = ::open(path.cStr(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    auto reason = std::generic_category().message(errno);
    PAYHOST_FAIL(FAILED, what, " ", path, ": cannot read: ", reason.c_str());
  }
  kj::FdInputStream input{kj::AutoCloseFd(fd)};
  auto bytes = input.readAllBytes(1 << 20);
  return kj::heapString(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

kj::String describeCertificate(kj::StringPtr pem) {
  BIO* bio = BIO_new_mem_buf(pem.begin(), static_cast<int>(pem.size()));
  if (bio == nullptr) return kj::str("unreadable");
  KJ_DEFER(BIO_free(bio));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  if (cert == nullptr) return kj::str("unreadable");
  KJ_DEFER(X509_free(cert));
  char subject[256] = {0};
  X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
  BIO* out = BIO_new(BIO_s_mem());
  if (out == nullptr) return kj::str(subject);
  KJ_DEFER(BIO_free(out));
  ASN1_TIME_print(out, X509_get0_notAfter(cert));
  char* text = nullptr;
  auto length = BIO_get_mem_data(out, &text);
  return kj::str("subject=\"", subject, "\" not_after=\"", kj::heapString(text, length), "\"");
}

}  // namespace payhost::host
