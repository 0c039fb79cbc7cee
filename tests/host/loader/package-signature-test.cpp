// Signed plugin packages: the signature file's strict format, version ordering, and
// PluginLibrary refusing unsigned, tampered, wrongly signed and swapped packages before any of
// their code runs (the marker fixture writes a file from a static initializer).
#include "host/loader/package-signature.h"

#include "host/loader/plugin-library.h"

#include <kj/debug.h>
#include <kj/exception.h>

#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/host/loader/loader-test-support.h"

namespace payhost::host {
namespace {

using testsupport::fixturePath;
using testsupport::nextLoadId;
using testsupport::readFile;
using testsupport::TempDir;

kj::ArrayPtr<const kj::byte> bytesOf(const std::string& text) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(text.data()), text.size());
}

void writeFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  KJ_ASSERT(out.good(), path);
}

bool exists(const std::string& path) {
  return access(path.c_str(), F_OK) == 0;
}

// The exception `f` throws, as text; "" when it does not throw.
template <typename F>
std::string failureOf(F&& f) {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions(kj::fwd<F>(f))) {
    return std::string(e->getDescription().cStr());
  }
  return "";
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A valid signature file for a made-up package, for the parser's tests.
std::string validSignature() {
  auto pair = generateSigningKey();
  return signPackageWithPem(pair.privatePem, bytesOf("some plugin bytes"), "card-processor",
                            "1.2.3-rc.1+build.5")
      .cStr();
}

std::string parseFailure(const std::string& text) {
  return failureOf([&]() { (void)parsePackageSignature(bytesOf(text), "p.so.sig"); });
}

TEST(PackageSignature, ParsesWhatSignWrites) {
  auto text = validSignature();
  auto manifest = parsePackageSignature(bytesOf(text), "p.so.sig");
  EXPECT_EQ(std::string(manifest.name.cStr()), "card-processor");
  EXPECT_EQ(std::string(manifest.version.cStr()), "1.2.3-rc.1+build.5");
  EXPECT_EQ(manifest.sha256, sha256Hex(bytesOf("some plugin bytes")));
  EXPECT_EQ(manifest.publicKeyHex.size(), 64u);
  EXPECT_EQ(manifest.signatureHex.size(), 128u);
  // Signed over exactly the first four lines.
  EXPECT_EQ(text.rfind(signedManifest(manifest.name, manifest.version, manifest.sha256).cStr(), 0),
            0u);
}

TEST(PackageSignature, RefusesAnythingButTheExactFormat) {
  auto text = validSignature();
  EXPECT_EQ(parseFailure(text), "");
  EXPECT_TRUE(has(parseFailure(""), "p.so.sig:1: not a payhost plugin signature"));
  EXPECT_TRUE(has(parseFailure("payhost-plugin-signature 2\n" + text.substr(text.find('\n') + 1)),
                  ":1: not a payhost plugin signature"));
  // Without the final newline.
  EXPECT_TRUE(has(parseFailure(text.substr(0, text.size() - 1)), ":6: signature file ends"));
  EXPECT_TRUE(has(parseFailure(text + "extra\n"), ":7: unexpected data"));
  // Lines out of order.
  auto name = text.find("name ");
  auto version = text.find("version ");
  auto swapped = text.substr(0, name) + text.substr(version, text.find("sha256 ") - version) +
                 text.substr(name, version - name) + text.substr(text.find("sha256 "));
  EXPECT_TRUE(has(parseFailure(swapped), ":2: expected 'name <value>'"));
  // Uppercase hex, a bad name, an empty value, a tab for a space.
  auto upper = text;
  auto sha = upper.find("sha256 ") + 7;
  for (size_t i = sha; i < sha + 64; ++i)
    upper[i] = static_cast<char>(toupper(upper[i]));
  EXPECT_TRUE(has(parseFailure(upper), ":4: sha256 must be 64 lowercase hexadecimal digits"));
  auto badName = text;
  badName.replace(name + 5, 4, "ca/d");
  EXPECT_TRUE(has(parseFailure(badName), ":2: name must be"));
  auto tab = text;
  tab[name + 4] = '\t';
  EXPECT_TRUE(has(parseFailure(tab), ":2: expected 'name <value>'"));
  // Bounded: a larger file is refused before it is looked at.
  EXPECT_TRUE(has(parseFailure(text + std::string(MAX_SIGNATURE_FILE_BYTES, '\n')),
                  "bytes; the limit is 1024"));
}

TEST(PackageSignature, VersionsOrderBySemanticVersioning) {
  auto order = [](kj::StringPtr a, kj::StringPtr b) {
    return KJ_ASSERT_NONNULL(compareVersions(a, b));
  };
  EXPECT_LT(order("1.2.3", "1.10.0"), 0);
  EXPECT_GT(order("2.0.0", "1.99.99"), 0);
  EXPECT_EQ(order("1.0.0", "1.0.0+other-build"), 0);
  EXPECT_LT(order("1.0.0-rc.1", "1.0.0"), 0);
  EXPECT_LT(order("1.0.0-alpha", "1.0.0-alpha.1"), 0);
  EXPECT_LT(order("1.0.0-alpha.1", "1.0.0-alpha.beta"), 0);
  EXPECT_LT(order("1.0.0-beta.2", "1.0.0-beta.11"), 0);
  EXPECT_LT(order("1.0.0-rc.1", "1.0.0-rc.1.1"), 0);
  EXPECT_TRUE(compareVersions("1.0", "1.0.0") == nullptr);
  EXPECT_TRUE(compareVersions("1.0.0", "v1.0.0") == nullptr);
  EXPECT_TRUE(compareVersions("01.0.0", "1.0.0") == nullptr);
}

TEST(PackageSignature, KeygenWritesThePrivateKeyOwnerOnly) {
  TempDir dir;
  auto pair = generateSigningKey();
  writeSigningKey(pair, dir.file("k.key").c_str(), dir.file("k.pub").c_str());
  struct stat info;
  ASSERT_EQ(stat(dir.file("k.key").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  ASSERT_EQ(stat(dir.file("k.pub").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0644u);
  // Never overwritten.
  EXPECT_TRUE(has(failureOf([&]() {
                    writeSigningKey(pair, dir.file("k.key").c_str(), dir.file("k2.pub").c_str());
                  }),
                  "cannot create key file"));
  // The public file is what TrustedKeys reads, and names the same key.
  kj::String paths[] = {kj::str(dir.file("k.pub").c_str())};
  auto trusted = TrustedKeys::load(paths);
  EXPECT_TRUE(trusted.find(publicKeyHexOf(pair.privatePem)) != nullptr);
  // A signing key readable by others is refused.
  chmod(dir.file("k.key").c_str(), 0644);
  EXPECT_TRUE(has(failureOf([&]() {
                    (void)signPackage(dir.file("k.key").c_str(), bytesOf("x"), "n", "1.0.0");
                  }),
                  "has mode 0644"));
  // A trusted key file others can write is refused.
  chmod(dir.file("k.pub").c_str(), 0666);
  EXPECT_TRUE(has(failureOf([&]() { (void)TrustedKeys::load(paths); }), "has mode 0666"));
}

// Signed packages loaded by PluginLibrary. Each test works on copies in its own directory and
// points the marker fixture at a file there.
class SignedLoad : public testing::Test {
protected:
  SignedLoad() {
    setenv("PAYHOST_MARKER_FILE", marker.c_str(), 1);
    pemPaths[0] = kj::str(dir.file("trusted.pub").c_str());
    writeSigningKey(key, dir.file("trusted.key").c_str(), pemPaths[0]);
    trusted = TrustedKeys::load(pemPaths);
    policy.trusted = &trusted;
  }
  ~SignedLoad() noexcept override { unsetenv("PAYHOST_MARKER_FILE"); }

  // A copy of the fixture `file` at `name`, signed with `signingPem` unless empty.
  std::string copyOf(const std::string& file, const std::string& name, kj::StringPtr signingPem,
                     kj::StringPtr pluginName = "marker", kj::StringPtr version = "1.0.0") {
    auto path = dir.file(name);
    auto bytes = readFile(fixturePath(file));
    writeFile(path, bytes);
    if (signingPem.size() > 0) {
      writeFile(path + ".sig",
                signPackageWithPem(signingPem, bytesOf(bytes), pluginName, version).cStr());
    }
    return path;
  }

  std::string loadFailure(const std::string& path) {
    return failureOf([&]() { (void)PluginLibrary::load(path.c_str(), nextLoadId(), policy); });
  }

  TempDir dir;
  std::string marker = dir.file("marker-ran");
  KeyPairPem key = generateSigningKey();
  kj::String pemPaths[1];
  TrustedKeys trusted;
  LoadPolicy policy;
};

TEST_F(SignedLoad, SignedByATrustedKeyLoadsAndItsCodeRuns) {
  auto path = copyOf("fixture-writes-marker.so", "marker.so", key.privatePem);
  ASSERT_FALSE(exists(marker));
  auto library = PluginLibrary::load(path.c_str(), nextLoadId(), policy);
  EXPECT_EQ(kj::StringPtr(library->descriptor().name), "marker");
  EXPECT_EQ(KJ_ASSERT_NONNULL(library->signer()), pemPaths[0]);
  // The marker proves the fixture's code runs once loaded: the refusals below mean something.
  EXPECT_TRUE(exists(marker));
}

TEST_F(SignedLoad, AKeptCopyCarriesItsSignatureAndLoadsAgain) {
  auto path = copyOf("fixture-echo.so", "echo.so", key.privatePem, "echo", "1.0.0");
  auto copy = dir.file("kept.so");
  {
    auto library = PluginLibrary::load(path.c_str(), nextLoadId(), policy);
    library->saveCopy(copy.c_str());
  }
  EXPECT_EQ(readFile(copy + ".sig"), readFile(path + ".sig"));
  auto again = PluginLibrary::load(copy.c_str(), nextLoadId(), policy);
  EXPECT_EQ(kj::StringPtr(again->descriptor().name), "echo");
}

TEST_F(SignedLoad, UnsignedIsRefusedBeforeAnyOfItsCodeRuns) {
  auto path = copyOf("fixture-writes-marker.so", "marker.so", "");
  auto failure = loadFailure(path);
  EXPECT_TRUE(has(failure, path + ": plugin refused: it is not signed (no " + path + ".sig"))
      << failure;
  EXPECT_FALSE(exists(marker));
}

TEST_F(SignedLoad, TamperedByOneByteIsRefusedBeforeAnyOfItsCodeRuns) {
  auto path = copyOf("fixture-writes-marker.so", "marker.so", key.privatePem);
  auto bytes = readFile(path);
  // One byte in the middle of the file (past the ELF header, which is still checked first).
  bytes[bytes.size() / 2] ^= 0x01;
  writeFile(path, bytes);
  auto failure = loadFailure(path);
  EXPECT_TRUE(has(failure, "plugin refused: its bytes are not the ones signed")) << failure;
  EXPECT_FALSE(exists(marker));
}

TEST_F(SignedLoad, SignedByAKeyNotTrustedIsRefused) {
  auto stranger = generateSigningKey();
  auto path = copyOf("fixture-writes-marker.so", "marker.so", stranger.privatePem);
  auto failure = loadFailure(path);
  EXPECT_TRUE(has(failure, kj::str("signed by key ", publicKeyHexOf(stranger.privatePem),
                                   ", which is not trusted")
                               .cStr()))
      << failure;
  EXPECT_FALSE(exists(marker));
}

TEST_F(SignedLoad, AnEditedSignatureFileIsRefused) {
  auto path = copyOf("fixture-writes-marker.so", "marker.so", key.privatePem);
  // Claims a newer version than was signed.
  auto text = readFile(path + ".sig");
  text.replace(text.find("version 1.0.0"), 13, "version 9.0.0");
  writeFile(path + ".sig", text);
  auto failure = loadFailure(path);
  EXPECT_TRUE(has(failure, "the signature does not verify")) << failure;
  EXPECT_FALSE(exists(marker));
}

TEST_F(SignedLoad, AManifestThatIsNotTheDescriptorIsRefusedNamingBoth) {
  auto path = copyOf("fixture-writes-marker.so", "marker.so", key.privatePem, "marker", "2.0.0");
  auto failure = loadFailure(path);
  EXPECT_TRUE(has(failure, "its descriptor says marker 1.0.0, the signature says marker 2.0.0"))
      << failure;
}

TEST_F(SignedLoad, TheVetoRefusesBeforeAnyOfItsCodeRuns) {
  auto path = copyOf("fixture-writes-marker.so", "marker.so", key.privatePem);
  kj::Function<void(const PackageManifest&)> veto = [](const PackageManifest& manifest) {
    KJ_FAIL_REQUIRE("vetoed", manifest.version);
  };
  policy.vetManifest = veto;
  EXPECT_TRUE(has(loadFailure(path), "vetoed"));
  EXPECT_FALSE(exists(marker));
}

TEST_F(SignedLoad, UnsignedLoadsOnlyWhenAllowed) {
  auto path = copyOf("fixture-writes-marker.so", "marker.so", "");
  policy.allowUnsigned = true;
  auto library = PluginLibrary::load(path.c_str(), nextLoadId(), policy);
  EXPECT_TRUE(library->signer() == nullptr);
  EXPECT_TRUE(exists(marker));
  // Allowing unsigned plugins does not let a bad signature through.
  auto stranger = generateSigningKey();
  auto other = copyOf("fixture-echo.so", "echo.so", stranger.privatePem, "echo", "1.0.0");
  EXPECT_TRUE(has(loadFailure(other), "which is not trusted"));
}

TEST_F(SignedLoad, AFileSwappedAfterVerificationLoadsTheVerifiedBytes) {
  // The signed echo plugin; once its bytes are verified, the file at its path becomes the
  // (unsigned) marker plugin, just before dlopen().
  auto path = copyOf("fixture-echo.so", "echo.so", key.privatePem, "echo", "1.0.0");
  auto verifiedSha = sha256Hex(bytesOf(readFile(path)));
  auto swapIn = readFile(fixturePath("fixture-writes-marker.so"));
  bool swapped = false;
  kj::Function<void()> swap = [&]() {
    auto temporary = path + ".new";
    writeFile(temporary, swapIn);
    KJ_SYSCALL(rename(temporary.c_str(), path.c_str()));
    swapped = true;
  };
  policy.beforeDlopenForTest = swap;
  auto library = PluginLibrary::load(path.c_str(), nextLoadId(), policy);
  ASSERT_TRUE(swapped);
  EXPECT_EQ(readFile(path), swapIn);
  EXPECT_EQ(kj::StringPtr(library->descriptor().name), "echo");
  EXPECT_EQ(library->sha256(), verifiedSha);
  EXPECT_FALSE(exists(marker));
}

}  // namespace
}  // namespace payhost::host
