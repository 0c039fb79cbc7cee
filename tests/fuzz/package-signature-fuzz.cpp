// libFuzzer target: the plugin package check (host/loader/package-signature): the strict parse
// of a signature file, then, for what parses, the trust, signature and digest checks against a
// fixed trusted key and package, and version ordering of what it names. Refusals are
// kj::Exceptions; anything else is a finding. A fuzzer-made file that verified would be a
// forgery: that aborts.
#include "host/loader/package-signature.h"

#include <kj/debug.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace {

using namespace payhost::host;

// The key that signed the seed corpus's valid files (tests/fuzz/corpus/package-signature).
constexpr kj::StringPtr TRUSTED_KEY =
    "502d739194010562a5c084eff865cddabb4d013645e8fce2b82d2643b716a31d"_kj;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const TrustedKeys trusted = []() {
    kj::StringPtr keys[] = {TRUSTED_KEY};
    return TrustedKeys::fromHex(keys);
  }();
  auto bytes = kj::arrayPtr(reinterpret_cast<const kj::byte*>(data), size);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 auto manifest = parsePackageSignature(bytes, "fuzz.so.sig");
                 (void)compareVersions(manifest.version, "1.0.0");
                 (void)compareVersions("2.0.0-rc.1", manifest.version);
                 // The digest of bytes no one signed: verifying must fail.
                 auto& signer = verifyPackage(trusted, manifest, sha256Hex(bytes), "fuzz.so");
                 KJ_FAIL_ASSERT("a fuzzer-made signature file verified", signer.source);
               })) {
    if (e->getType() != kj::Exception::Type::FAILED ||
        e->getDescription().startsWith("a fuzzer-made")) {
      abort();
    }
  }
  return 0;
}
