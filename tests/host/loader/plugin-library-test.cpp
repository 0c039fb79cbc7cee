#include "host/loader/plugin-library.h"

#include <payhost/abi.h>
#include <payhost/compat.h>
#include <payhost/fingerprint.h>

#include <kj/debug.h>
#include <kj/exception.h>

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include "tests/host/loader/loader-test-support.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace payhost::host {
namespace {

using testsupport::addressMappedFrom;
using testsupport::anyMappingMentions;
using testsupport::anyMappingNamed;
using testsupport::fixturePath;
using testsupport::nextLoadId;
using testsupport::readFile;
using testsupport::TempDir;
using testsupport::TestContext;
using UnloadResult = PluginLibrary::UnloadResult;

std::string sha256Hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  KJ_ASSERT(EVP_Digest(bytes.data(), bytes.size(), digest, &size, EVP_sha256(), nullptr) == 1);
  static constexpr char HEX[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < size; ++i) {
    hex += HEX[digest[i] >> 4];
    hex += HEX[digest[i] & 0xf];
  }
  return hex;
}

std::string toStd(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

// The description of the exception loading `path` throws; fails the test when none is thrown.
kj::Own<PluginLibrary> loadFile(const std::string& path, uint64_t loadId = nextLoadId()) {
  return PluginLibrary::load(kj::StringPtr(path.c_str()), loadId);
}

kj::Own<PluginLibrary> loadFixture(std::string_view file) {
  return loadFile(fixturePath(file));
}

std::string loadError(const std::string& path, uint64_t loadId = nextLoadId()) {
  KJ_IF_MAYBE (exception, kj::runCatchingExceptions([&]() {
                 PluginLibrary::load(kj::StringPtr(path.c_str()), loadId);
               })) {
    return exception->getDescription().cStr();
  }
  ADD_FAILURE() << "loading " << path << " did not fail";
  return "";
}

// Creates one plugin instance through the C door, as a host does; the test destroys it.
void* createInstance(const payhost_plugin_v1_descriptor& descriptor, TestContext& context) {
  char message[256] = {0};
  payhost_error_v1 error{message, sizeof(message)};
  void* instance = descriptor.create(context.asCreateArgument(), &error);
  KJ_REQUIRE(instance != nullptr, "create failed", message);
  return instance;
}

TEST(PluginLibrary, LoadsTheEchoFixtureAndReadsItsDescriptor) {
  auto path = fixturePath("fixture-echo.so");
  auto library = loadFile(path);

  auto& descriptor = library->descriptor();
  EXPECT_STREQ(descriptor.name, "echo");
  EXPECT_STREQ(descriptor.version, "1.0.0");
  ASSERT_EQ(descriptor.service_count, 1u);
  EXPECT_STREQ(descriptor.services[0].name, "test.echo");
  EXPECT_STREQ(descriptor.services[0].interface_name, "payhost::schema::FraudScreen");
  EXPECT_EQ(descriptor.abi_major, PAYHOST_ABI_MAJOR);
  EXPECT_STREQ(descriptor.fingerprint, PAYHOST_BUILD_FINGERPRINT);
  EXPECT_EQ(toStd(library->path()), path);
  EXPECT_EQ(library->liveObjects(), 0u);
}

TEST(PluginLibrary, Sha256IsTheDigestOfTheFile) {
  auto path = fixturePath("fixture-echo.so");
  auto library = loadFile(path);

  EXPECT_EQ(toStd(library->sha256()), sha256Hex(readFile(path)));
  EXPECT_EQ(library->sha256().size(), 64u);
}

TEST(PluginLibrary, DescriptorLiesInTheMappingNamedMappedName) {
  auto loadId = nextLoadId();
  auto library = loadFile(fixturePath("fixture-echo.so"), loadId);

  EXPECT_EQ(toStd(library->mappedName()),
            toStd(kj::str("/memfd:payhost:fixture-echo.so:", loadId)));
  EXPECT_TRUE(anyMappingNamed(library->mappedName()));
  EXPECT_TRUE(addressMappedFrom(&library->descriptor(), library->mappedName()));
  EXPECT_TRUE(isMapped(library->mappedName()));
}

TEST(PluginLibrary, UnloadRemovesTheMapping) {
  auto library = loadFixture("fixture-echo.so");
  auto name = kj::heapString(library->mappedName());
  ASSERT_TRUE(anyMappingNamed(name));

  EXPECT_EQ(library->unload(), UnloadResult::UNMAPPED);
  EXPECT_FALSE(anyMappingNamed(name));
  EXPECT_FALSE(isMapped(name));
}

TEST(PluginLibrary, UnloadTwiceReturnsTheFirstResult) {
  auto library = loadFixture("fixture-echo.so");

  EXPECT_EQ(library->unload(), UnloadResult::UNMAPPED);
  EXPECT_EQ(library->unload(), UnloadResult::UNMAPPED);
}

TEST(PluginLibrary, DestructorUnloads) {
  kj::String name;
  {
    auto library = loadFixture("fixture-echo.so");
    name = kj::heapString(library->mappedName());
    ASSERT_TRUE(anyMappingNamed(name));
  }
  EXPECT_FALSE(anyMappingNamed(name));
}

TEST(PluginLibrary, LoadingOneFileTwiceGivesTwoIndependentLibraries) {
  auto path = fixturePath("fixture-echo.so");
  auto first = loadFile(path);
  auto second = loadFile(path);

  EXPECT_NE(toStd(first->mappedName()), toStd(second->mappedName()));
  EXPECT_NE(&first->descriptor(), &second->descriptor());
  EXPECT_TRUE(addressMappedFrom(&first->descriptor(), first->mappedName()));
  EXPECT_TRUE(addressMappedFrom(&second->descriptor(), second->mappedName()));

  // Each copy counts its own objects.
  TestContext context;
  void* instance = createInstance(first->descriptor(), context);
  EXPECT_EQ(first->liveObjects(), 1u);
  EXPECT_EQ(second->liveObjects(), 0u);
  first->descriptor().destroy(instance);

  // Closing one leaves the other loaded and usable.
  auto firstName = kj::heapString(first->mappedName());
  EXPECT_EQ(first->unload(), UnloadResult::UNMAPPED);
  EXPECT_FALSE(anyMappingNamed(firstName));
  EXPECT_TRUE(anyMappingNamed(second->mappedName()));
  instance = createInstance(second->descriptor(), context);
  EXPECT_EQ(second->liveObjects(), 1u);
  second->descriptor().destroy(instance);
  EXPECT_EQ(second->unload(), UnloadResult::UNMAPPED);
}

TEST(PluginLibrary, LoadsTheBytesItReadNotTheFileAsItIsLater) {
  TempDir dir;
  auto path = dir.file("echo.so");
  std::filesystem::copy_file(fixturePath("fixture-echo.so"), path);
  auto original = readFile(path);

  auto library = loadFile(path);

  // Overwrite the file in place (same inode, same size): a library mapped from the file itself
  // would now see these bytes.
  {
    std::ofstream out(path, std::ios::binary | std::ios::in | std::ios::out);
    std::string junk(original.size(), '\xcc');
    out.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  ASSERT_NE(readFile(path), original);

  EXPECT_FALSE(anyMappingMentions(dir.path()));
  EXPECT_EQ(toStd(library->sha256()), sha256Hex(original));
  EXPECT_STREQ(library->descriptor().name, "echo");
  TestContext context;
  void* instance = createInstance(library->descriptor(), context);
  ASSERT_EQ(context.logger.events.size(), 1u);
  EXPECT_EQ(context.logger.events[0], "echo.started");
  library->descriptor().destroy(instance);
  EXPECT_EQ(library->unload(), UnloadResult::UNMAPPED);
}

TEST(PluginLibrary, RefusesAFileThatIsNotElf) {
  auto path = fixturePath("fixture-not-elf.so");
  auto message = loadError(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("not an ELF shared library"), std::string::npos) << message;
}

TEST(PluginLibrary, RefusesALibraryWithoutTheEntrySymbol) {
  auto path = fixturePath("fixture-missing-entry.so");
  auto message = loadError(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("no entry symbol 'payhost_plugin_v1'"), std::string::npos) << message;
}

TEST(PluginLibrary, RefusesAnotherSdkAbiNamingBothSides) {
  auto path = fixturePath("fixture-wrong-abi.so");
  auto message = loadError(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("SDK ABI mismatch"), std::string::npos) << message;
  EXPECT_NE(message.find("99.0"), std::string::npos) << message;
  auto hostRange = toStd(kj::str("host supports ", PAYHOST_ABI_MAJOR, ".0 to ", PAYHOST_ABI_MAJOR,
                                 ".", PAYHOST_ABI_MINOR));
  EXPECT_NE(message.find(hostRange), std::string::npos) << message;
}

TEST(PluginLibrary, RefusesAnotherBuildFingerprintNamingBoth) {
  auto path = fixturePath("fixture-wrong-fingerprint.so");
  auto message = loadError(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("fingerprint mismatch"), std::string::npos) << message;
  EXPECT_NE(message.find("compiler=clang-18 stdlib=libc++-abi1 capnp=1.0.1"), std::string::npos)
      << message;
  EXPECT_NE(message.find(PAYHOST_BUILD_FINGERPRINT), std::string::npos) << message;
  EXPECT_NE(message.find(sdkFingerprint().cStr()), std::string::npos) << message;
}

TEST(PluginLibrary, RefusedLibraryIsNotLeftMapped) {
  auto loadId = nextLoadId();
  loadError(fixturePath("fixture-wrong-abi.so"), loadId);
  EXPECT_FALSE(anyMappingNamed(kj::str("/memfd:payhost:fixture-wrong-abi.so:", loadId)));
}

TEST(PluginLibrary, RefusesAMissingFileNamingIt) {
  TempDir dir;
  auto path = dir.file("absent.so");
  auto message = loadError(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("cannot open"), std::string::npos) << message;
}

TEST(PluginLibrary, RefusesADirectoryNamingIt) {
  TempDir dir;
  auto message = loadError(dir.path());
  EXPECT_NE(message.find(dir.path()), std::string::npos) << message;
  EXPECT_NE(message.find("not a regular file"), std::string::npos) << message;
}

TEST(PluginLibrary, ParksALibraryWhoseObjectsAreAlive) {
  auto library = loadFixture("fixture-echo.so");
  auto name = kj::heapString(library->mappedName());
  // Kept for after the unload: a parked library stays mapped, so its descriptor stays readable.
  const payhost_plugin_v1_descriptor* descriptor = &library->descriptor();
  TestContext context;
  void* instance = createInstance(*descriptor, context);
  ASSERT_EQ(library->liveObjects(), 1u);

  UnloadResult result;
  {
#if defined(__SANITIZE_ADDRESS__)
    // Parking leaks the library handle on purpose, so the instance's code is never unmapped.
    __lsan::ScopedDisabler parkedLibraryIsLeakedByDesign;
#endif
    result = library->unload();
  }

  EXPECT_EQ(result, UnloadResult::PARKED);
  EXPECT_TRUE(anyMappingNamed(name));
  EXPECT_TRUE(addressMappedFrom(descriptor, name));
  EXPECT_EQ(library->unload(), UnloadResult::PARKED);
  library = nullptr;
  EXPECT_TRUE(anyMappingNamed(name));

  // The instance's code is still there to run its destructor.
  descriptor->destroy(instance);
  EXPECT_EQ(descriptor->live_objects(), 0u);
}

TEST(PluginLibrary, ClosesTheLibraryOnceItsLastObjectIsGone) {
  auto library = loadFixture("fixture-echo.so");
  TestContext context;
  void* instance = createInstance(library->descriptor(), context);
  EXPECT_EQ(library->liveObjects(), 1u);
  library->descriptor().destroy(instance);
  EXPECT_EQ(library->liveObjects(), 0u);

  EXPECT_EQ(library->unload(), UnloadResult::UNMAPPED);
}

TEST(PluginLibrary, ThrowingConstructorReportsItsMessageAndLeavesNothingAlive) {
  auto library = loadFixture("fixture-throws-in-create.so");
  TestContext context;
  char message[256] = {0};
  payhost_error_v1 error{message, sizeof(message)};

  EXPECT_EQ(library->descriptor().create(context.asCreateArgument(), &error), nullptr);
  EXPECT_NE(std::string(message).find("cannot reach the issuer's simulator"), std::string::npos)
      << message;
  EXPECT_EQ(library->liveObjects(), 0u);
  EXPECT_EQ(library->unload(), UnloadResult::UNMAPPED);
}

// The first load of fixture-stays-mapped in this process, loaded and unloaded once. Only the
// first copy stays mapped: glibc binds a later copy's unique symbols to the first copy's, so the
// later copy can be unloaded.
struct StuckLibrary {
  kj::String mappedName;
  UnloadResult unloadResult;
};
const StuckLibrary& stuckLibrary() {
  static const StuckLibrary stuck = [] {
    auto library = loadFixture("fixture-stays-mapped.so");
    auto name = kj::heapString(library->mappedName());
    auto result = library->unload();
    return StuckLibrary{kj::mv(name), result};
  }();
  return stuck;
}

TEST(PluginLibrary, ReportsALibraryGlibcKeepsMappedAsStillMapped) {
  auto& stuck = stuckLibrary();
  EXPECT_EQ(stuck.unloadResult, UnloadResult::STILL_MAPPED);
  EXPECT_TRUE(anyMappingNamed(stuck.mappedName));
}

// glibc finds an already-loaded library by the path it was opened with (/proc/self/fd/N). A
// library that stays mapped must keep its descriptor number, or the next load gets it back.
TEST(PluginLibrary, NextLoadAfterAStillMappedLibraryGetsItsOwnCode) {
  ASSERT_EQ(stuckLibrary().unloadResult, UnloadResult::STILL_MAPPED);

  auto library = loadFixture("fixture-echo.so");
  EXPECT_TRUE(addressMappedFrom(&library->descriptor(), library->mappedName()));
}

TEST(PluginLibrary, NextLoadAfterARefusedUnloadableLibraryGetsItsOwnCode) {
  auto message = loadError(fixturePath("fixture-unique-symbols.so"));
  ASSERT_NE(message.find("no entry symbol"), std::string::npos) << message;

  auto library = loadFixture("fixture-echo.so");
  EXPECT_STREQ(library->descriptor().name, "echo");
  EXPECT_TRUE(addressMappedFrom(&library->descriptor(), library->mappedName()));
}

TEST(PluginLibrary, IsMappedMatchesWholeNamesOnly) {
  auto library = loadFixture("fixture-echo.so");
  auto name = toStd(library->mappedName());

  EXPECT_TRUE(isMapped(library->mappedName()));
  // A name that is a prefix of a mapped name, or has it as a prefix, is not mapped.
  EXPECT_FALSE(isMapped(kj::heapString(name.c_str(), name.size() - 1)));
  EXPECT_FALSE(isMapped(kj::str(library->mappedName(), "0")));
}

TEST(PluginLibrary, UnloadResultNames) {
  EXPECT_EQ(toStd(unloadResultName(UnloadResult::UNMAPPED)), "unmapped");
  EXPECT_EQ(toStd(unloadResultName(UnloadResult::STILL_MAPPED)), "still-mapped");
  EXPECT_EQ(toStd(unloadResultName(UnloadResult::PARKED)), "parked");
}

}  // namespace
}  // namespace payhost::host
