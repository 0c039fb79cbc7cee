#include "tests/support/postgres-server.h"

#include <kj/debug.h>
#include <kj/exception.h>

#include <libpq-fe.h>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "tests/support/test-artifacts.h"

namespace payhost::testsupport {

namespace fs = std::filesystem;

namespace {

PostgresServer* postgres = nullptr;

// Runs `argv` as the postgres user; returns its pid. Output goes to `logFile`.
pid_t spawnAsPostgres(const std::vector<std::string>& argv, const fs::path& logFile) {
  auto user = getpwnam("postgres");
  KJ_REQUIRE(user != nullptr, "no postgres user (apt-get install postgresql)");
  pid_t pid = fork();
  KJ_REQUIRE(pid >= 0, "fork failed");
  if (pid == 0) {
    int fd = ::open(logFile.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    if (getuid() == 0) {
      if (initgroups("postgres", user->pw_gid) != 0 || setgid(user->pw_gid) != 0 ||
          setuid(user->pw_uid) != 0) {
        _exit(126);
      }
    }
    std::vector<char*> args;
    for (auto& arg : argv)
      args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

TempDir::TempDir() : TempDir(testTempBase()) {}

TempDir::TempDir(const fs::path& base) {
  std::string pattern = (base / "payhost-test-XXXXXX").native();
  KJ_ASSERT(mkdtemp(pattern.data()) != nullptr, "mkdtemp failed", pattern.c_str());
  path = pattern;
}

TempDir::~TempDir() {
  retireTestDir(path);
}

namespace {

void startCatching(PostgresServer& server) {
  server.attempted = true;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { server.start(); })) {
    server.failure = e->getDescription().cStr();
    server.conninfo.clear();
  }
}

}  // namespace

PostgresServer* postgresServer() {
  if (postgres != nullptr && !postgres->attempted) startCatching(*postgres);
  return postgres;
}

void PostgresServer::start() {
  constexpr const char* BIN = "/usr/lib/postgresql/15/bin/";
  auto user = getpwnam("postgres");
  KJ_REQUIRE(user != nullptr, "no postgres user (apt-get install postgresql)");
  // initdb refuses root, and a directory it does not own: as root, run it as postgres.
  if (getuid() == 0) {
    KJ_REQUIRE(chown(dir.path.c_str(), user->pw_uid, user->pw_gid) == 0, "chown failed");
  }
  chmod(dir.path.c_str(), 0700);
  auto data = dir.path / "data";
  auto log = dir.path / "server.log";
  auto init = spawnAsPostgres({std::string(BIN) + "initdb", "-D", data.native(), "-A", "trust",
                               "-U", "postgres", "--no-sync"},
                              log);
  int status = 0;
  waitpid(init, &status, 0);
  KJ_REQUIRE(WIFEXITED(status) && WEXITSTATUS(status) == 0, "initdb failed", readLog());
  pid = spawnAsPostgres({std::string(BIN) + "postgres", "-D", data.native(), "-k",
                         dir.path.native(), "-c", "listen_addresses=", "-c", "max_connections=40"},
                        log);
  conninfo = "host=" + dir.path.native() + " user=postgres dbname=postgres";
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (PQping(conninfo.c_str()) != PQPING_OK) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pid = -1;
      KJ_FAIL_REQUIRE("postgres exited at start", readLog());
    }
    KJ_REQUIRE(std::chrono::steady_clock::now() < deadline, "postgres did not accept in 30 s",
               readLog());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void PostgresServer::stop() {
  if (pid <= 0) return;
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  pid = -1;
}

std::string PostgresServer::createDatabase(const std::string& name) {
  KJ_REQUIRE(!conninfo.empty(), "PostgreSQL is not running", failure);
  PGconn* conn = PQconnectdb(conninfo.c_str());
  KJ_DEFER(PQfinish(conn));
  KJ_REQUIRE(PQstatus(conn) == CONNECTION_OK, PQerrorMessage(conn));
  PGresult* result = PQexec(conn, ("CREATE DATABASE \"" + name + "\"").c_str());
  KJ_DEFER(PQclear(result));
  KJ_REQUIRE(PQresultStatus(result) == PGRES_COMMAND_OK, PQerrorMessage(conn));
  return "host=" + dir.path.native() + " user=postgres dbname=" + name;
}

std::string PostgresServer::readLog() {
  std::string text;
  FILE* file = fopen((dir.path / "server.log").c_str(), "r");
  if (file == nullptr) return text;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), file)) > 0)
    text.append(buffer, n);
  fclose(file);
  return text;
}

void PostgresEnvironment::SetUp() {
  postgres = &server;
  if (when == Start::AT_SET_UP) startCatching(server);
}

void PostgresEnvironment::TearDown() {
  server.stop();
}

}  // namespace payhost::testsupport
