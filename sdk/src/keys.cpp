#include <payhost/keys.h>

namespace payhost {

kj::StringPtr keyTypeName(KeyType type) {
  switch (type) {
    case KeyType::ED25519:
      return "ed25519";
    case KeyType::AES_256_GCM:
      return "aes-256-gcm";
    case KeyType::HMAC_SHA256:
      return "hmac-sha256";
  }
  return "unknown";
}

}  // namespace payhost
