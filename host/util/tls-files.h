// What the rooms that make TLS contexts (rpc/ for client listeners, outbound/ for connections to
// remotes) share: reading the PEM files of certificates and private keys, the one rule for a safe
// private key file, and the cipher policy.
//
// Thread-safe (no state).

#pragma once

#include <kj/string.h>

namespace payhost::host {

// TLS 1.2 suites with forward secrecy and AEAD only (Mozilla "modern" for 1.2); TLS 1.3 suites
// are all AEAD and keep OpenSSL's defaults. Both sides use TLS 1.2 as the minimum version.
constexpr const char* TLS_CIPHER_LIST =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// Fails unless the private key file at `path` is safe to use: a regular file whose mode gives
// "other" nothing and its group no write. `what` names the config key in the message.
void checkPrivateKeyFile(kj::StringPtr path, kj::StringPtr what);

// The contents of the file at `path` (at most 1 MiB). Fails naming `what` and `path` when it
// cannot be read. The caller wipes a private key's bytes once parsed.
kj::String readPemFile(kj::StringPtr path, kj::StringPtr what);

// `subject="..." not_after="..."` of the first certificate in `pem`, for the log ("unreadable"
// when it cannot be parsed). No key material.
kj::String describeCertificate(kj::StringPtr pem);

}  // namespace payhost::host
