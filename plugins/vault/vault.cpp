// The vault plugin: takes a card number once, stores it sealed with AES-256-GCM through a host
// key handle (associated data = the token), and hands back a random token. Serves
// `payments.vault` (payhost::schema::Vault: tokenize, describe, deleteToken) for merchants and
// `payments.vault.reveal` (payhost::schema::VaultReveal) for the one internal caller that must
// send the number to an issuer. README.md beside this file has the rules and the config.
//
// The card number lives only in `Pan` buffers that are wiped when they go, and in the sealed
// column; it is never logged, never put in an error message, never written in the clear.

#include <payhost/context.h>
#include <payhost/log.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>

#include <kj/debug.h>
#include <kj/refcount.h>

#include <cstdint>
#include <cstring>

#include "card-number.h"

namespace payhost::plugins::vault {
namespace {

namespace schema = payhost::schema;

constexpr kj::StringPtr SERVICE_NAME = "payments.vault"_kj;
constexpr kj::StringPtr REVEAL_SERVICE_NAME = "payments.vault.reveal"_kj;
constexpr size_t MAX_PURPOSE_BYTES = 255;

// BYTEA and BIGINT mean the same to SQLite (BLOB and INTEGER affinity) and to PostgreSQL.
constexpr kj::StringPtr CREATE_TABLE =
    "CREATE TABLE IF NOT EXISTS vault_cards ("
    "token TEXT PRIMARY KEY, sealed BYTEA NOT NULL, brand TEXT NOT NULL, last4 TEXT NOT NULL, "
    "expiry_month BIGINT NOT NULL, expiry_year BIGINT NOT NULL, created_unix_ms BIGINT NOT NULL)"_kj;

schema::CardBrand toSchema(Brand brand) {
  switch (brand) {
    case Brand::VISA:
      return schema::CardBrand::VISA;
    case Brand::MASTERCARD:
      return schema::CardBrand::MASTERCARD;
    case Brand::AMEX:
      return schema::CardBrand::AMEX;
    case Brand::DISCOVER:
      return schema::CardBrand::DISCOVER;
    case Brand::JCB:
      return schema::CardBrand::JCB;
    case Brand::DINERS_CLUB:
      return schema::CardBrand::DINERS_CLUB;
    case Brand::UNION_PAY:
      return schema::CardBrand::UNION_PAY;
    case Brand::MAESTRO:
      return schema::CardBrand::MAESTRO;
    case Brand::OTHER:
      return schema::CardBrand::OTHER;
  }
  KJ_UNREACHABLE;
}

Brand brandNamed(kj::StringPtr name) {
  for (auto brand : {Brand::VISA, Brand::MASTERCARD, Brand::AMEX, Brand::DISCOVER, Brand::JCB,
                     Brand::DINERS_CLUB, Brand::UNION_PAY, Brand::MAESTRO}) {
    if (nameOf(brand) == name) return brand;
  }
  return Brand::OTHER;
}

// The civil (UTC) year and month of `date` (Howard Hinnant's days-to-civil algorithm).
void yearMonthOf(kj::Date date, uint32_t& year, uint32_t& month) {
  int64_t days = (date - kj::UNIX_EPOCH) / kj::SECONDS;
  days = (days >= 0 ? days : days - 86399) / 86400 + 719468;
  int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  int64_t dayOfEra = days - era * 146097;
  int64_t yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146096) / 365;
  int64_t dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100);
  int64_t mp = (5 * dayOfYear + 2) / 153;
  int64_t m = mp < 10 ? mp + 3 : mp - 9;
  year = static_cast<uint32_t>(yearOfEra + era * 400 + (m <= 2 ? 1 : 0));
  month = static_cast<uint32_t>(m);
}

// A purpose is logged, so it must be plain text that cannot carry a card number.
bool isLoggablePurpose(kj::StringPtr purpose) {
  if (purpose.size() == 0 || purpose.size() > MAX_PURPOSE_BYTES) return false;
  size_t digitRun = 0;
  for (char c : purpose) {
    if (c < 0x20 || c > 0x7e) return false;
    digitRun = (c >= '0' && c <= '9') ? digitRun + 1 : 0;
    if (digitRun >= MIN_PAN_DIGITS) return false;
  }
  return true;
}

// What one plugin instance shares with its servers. The host promises the context outlives the
// instance, not the servers, so the instance detaches on destruction and later calls fail
// DISCONNECTED. Shard-local.
class Shard final : public kj::Refcounted {
public:
  Shard(Context& context, kj::String keyName, kj::String databaseName)
      : keyName(kj::mv(keyName)), databaseName(kj::mv(databaseName)), context_(context) {}

  Context& context() {
    KJ_IF_MAYBE (borrowed, context_) {
      return *borrowed;
    }
    kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "the vault instance has been shut down"));
  }
  void detach() { context_ = nullptr; }

  KeyHandle& key() { return context().keys(keyName); }
  Database& database() { return context().sql(databaseName); }

  // The table is created by the first transaction of each instance (the database may be granted
  // after the instance starts, as in the test host); `CREATE ... IF NOT EXISTS` makes a race
  // between shards harmless.
  bool tableCreated = false;

  const kj::String keyName;
  const kj::String databaseName;

private:
  kj::Maybe<Context&> context_;
};

void setRejected(schema::Rejection::Builder out, schema::RejectCode code, kj::StringPtr message) {
  out.setCode(code);
  out.setMessage(message);
}

struct StoredCard {
  Brand brand;
  kj::String last4;
  uint32_t month;
  uint32_t year;
  kj::Array<kj::byte> sealed;  // only when asked for
};

class VaultServer final : public schema::Vault::Server {
public:
  explicit VaultServer(kj::Own<Shard> shard) : shard(kj::mv(shard)) {}

  kj::Promise<void> tokenize(TokenizeContext call) override {
    auto& context = shard->context();
    auto request = call.getParams().getRequest();

    kj::StringPtr problem;
    auto checked = checkCard(request.getPan(), problem);
    uint32_t month = request.getExpiryMonth();
    uint32_t year = request.getExpiryYear();
    uint32_t currentYear, currentMonth;
    auto now = context.clock().now();
    yearMonthOf(now, currentYear, currentMonth);
    if (checked == nullptr) {
      return refuse(call, schema::RejectCode::INVALID_CARD, problem);
    }
    KJ_IF_MAYBE (expiryProblem, checkExpiry(month, year, currentYear, currentMonth)) {
      return refuse(call, schema::RejectCode::INVALID_CARD, *expiryProblem);
    }
    auto& card = KJ_ASSERT_NONNULL(checked);
    // The request (and its copy of the number) is no longer needed.
    call.releaseParams();

    auto token = newToken();
    auto sealed = shard->key().encrypt(card.pan.bytes(), token.asBytes());
    auto last4 = kj::heapString(card.pan.digits().slice(card.pan.size() - 4));
    auto brand = card.brand;
    // The number is wiped here: from now on only the sealed form exists.
    checked = nullptr;

    int64_t createdMs = (now - kj::UNIX_EPOCH) / kj::MILLISECONDS;
    bool createTable = !shard->tableCreated;
    auto brandName = nameOf(brand);
    return shard->database()
        .transaction([createTable, token = kj::heapString(token), sealed = kj::mv(sealed),
                      brandName, last4 = kj::heapString(last4), month, year,
                      createdMs](SqlTransaction& tx) {
          if (createTable) tx.execute(CREATE_TABLE);
          tx.execute(
              "INSERT INTO vault_cards (token, sealed, brand, last4, expiry_month, expiry_year, "
              "created_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
              {token, sealed, brandName, last4, int64_t{month}, int64_t{year}, createdMs});
        })
        .then([shard = kj::addRef(*shard), call, token = kj::mv(token), last4 = kj::mv(last4),
               brand, month, year]() mutable {
          shard->tableCreated = true;
          auto out = call.getResults().initResult().initCard();
          out.setToken(token);
          out.setBrand(toSchema(brand));
          out.setLast4(last4);
          out.setExpiryMonth(static_cast<uint8_t>(month));
          out.setExpiryYear(static_cast<uint16_t>(year));
          shard->context().log().info(
              "vault.tokenize",
              {{"token", token}, {"brand", nameOf(brand)}, {"outcome", "stored"}});
        });
  }

  kj::Promise<void> describe(DescribeContext call) override {
    auto token = kj::heapString(call.getParams().getToken());
    if (!isVaultToken(token)) {
      setRejected(call.getResults().initResult().initRejected(),
                  schema::RejectCode::INVALID_REQUEST, "token is not a vault token");
      return kj::READY_NOW;
    }
    return findIn(*shard, kj::mv(token), false).then([call](kj::Maybe<StoredCard> found) mutable {
      KJ_IF_MAYBE (card, found) {
        auto out = call.getResults().initResult().initCard();
        out.setToken(call.getParams().getToken());
        out.setBrand(toSchema(card->brand));
        out.setLast4(card->last4);
        out.setExpiryMonth(static_cast<uint8_t>(card->month));
        out.setExpiryYear(static_cast<uint16_t>(card->year));
      } else {
        setRejected(call.getResults().initResult().initRejected(),
                    schema::RejectCode::UNKNOWN_TOKEN, "no card is stored under this token");
      }
    });
  }

  kj::Promise<void> deleteToken(DeleteTokenContext call) override {
    auto token = kj::heapString(call.getParams().getToken());
    if (!isVaultToken(token)) {
      setRejected(call.getResults().initResult().initRejected(),
                  schema::RejectCode::INVALID_REQUEST, "token is not a vault token");
      return kj::READY_NOW;
    }
    bool createTable = !shard->tableCreated;
    return shard->database()
        .transaction([createTable, token = kj::heapString(token)](SqlTransaction& tx) {
          if (createTable) tx.execute(CREATE_TABLE);
          return tx.execute("DELETE FROM vault_cards WHERE token = $1", {token}).changes();
        })
        .then([shard = kj::addRef(*shard), call, token = kj::mv(token)](uint64_t changes) mutable {
          shard->tableCreated = true;
          auto result = call.getResults().initResult();
          if (changes == 0) {
            setRejected(result.initRejected(), schema::RejectCode::UNKNOWN_TOKEN,
                        "no card is stored under this token");
          } else {
            result.setDeleted(token);
          }
          shard->context().log().info(
              "vault.delete",
              {{"token", token}, {"outcome", changes == 0 ? "unknown" : "deleted"}});
        });
  }

  // Looks up a stored card (with its sealed number when `withSealed`); null when none. Tokens
  // that are not vault tokens are never looked up (null).
  static kj::Promise<kj::Maybe<StoredCard>> findIn(Shard& shard, kj::String token,
                                                   bool withSealed) {
    if (!isVaultToken(token)) return kj::Maybe<StoredCard>(nullptr);
    bool createTable = !shard.tableCreated;
    return shard.database()
        .transaction([createTable, token = kj::mv(token), withSealed](SqlTransaction& tx) {
          if (createTable) tx.execute(CREATE_TABLE);
          return tx.execute(
              "SELECT brand, last4, expiry_month, expiry_year, sealed FROM vault_cards "
              "WHERE token = $1",
              {token});
        })
        .then([held = kj::addRef(shard),
               withSealed](SqlResult rows) mutable -> kj::Maybe<StoredCard> {
          held->tableCreated = true;
          if (rows.rowCount() == 0) return nullptr;
          StoredCard card{brandNamed(rows.text(0, 0)), kj::heapString(rows.text(0, 1)),
                          static_cast<uint32_t>(rows.integer(0, 2)),
                          static_cast<uint32_t>(rows.integer(0, 3)), nullptr};
          if (withSealed) card.sealed = kj::heapArray(rows.blob(0, 4));
          return kj::mv(card);
        });
  }

private:
  template <typename Call>
  kj::Promise<void> refuse(Call& call, schema::RejectCode code, kj::StringPtr message) {
    setRejected(call.getResults().initResult().initRejected(), code, message);
    shard->context().log().info("vault.tokenize", {{"outcome", "rejected"}, {"reason", message}});
    return kj::READY_NOW;
  }

  kj::Own<Shard> shard;
};

class RevealServer final : public schema::VaultReveal::Server {
public:
  explicit RevealServer(kj::Own<Shard> shard) : shard(kj::mv(shard)) {}

  kj::Promise<void> reveal(RevealContext call) override {
    auto params = call.getParams();
    auto token = kj::heapString(params.getToken());
    auto purpose = kj::heapString(params.getPurpose());
    if (!isVaultToken(token)) {
      setRejected(call.getResults().initResult().initRejected(),
                  schema::RejectCode::INVALID_REQUEST, "token is not a vault token");
      return kj::READY_NOW;
    }
    if (!isLoggablePurpose(purpose)) {
      setRejected(call.getResults().initResult().initRejected(),
                  schema::RejectCode::INVALID_REQUEST,
                  "purpose must be 1 to 255 printable characters without a run of 12 digits");
      return kj::READY_NOW;
    }
    return VaultServer::findIn(*shard, kj::heapString(token), true)
        .then([shard = kj::addRef(*shard), call, token = kj::mv(token),
               purpose = kj::mv(purpose)](kj::Maybe<StoredCard> found) mutable {
          auto& log = shard->context().log();
          auto result = call.getResults().initResult();
          KJ_IF_MAYBE (card, found) {
            KJ_IF_MAYBE (plain, shard->key().tryDecrypt(card->sealed, token.asBytes())) {
              KJ_DEFER(explicit_bzero(plain->begin(), plain->size()));
              auto out = result.initCard();
              auto pan = out.initPan(plain->size());
              memcpy(pan.begin(), plain->begin(), plain->size());
              out.setExpiryMonth(static_cast<uint8_t>(card->month));
              out.setExpiryYear(static_cast<uint16_t>(card->year));
              out.setBrand(toSchema(card->brand));
              log.info("vault.reveal",
                       {{"token", token}, {"purpose", purpose}, {"outcome", "revealed"}});
            } else {
              // The row or the key was changed behind the vault's back: never guess.
              log.error("vault.reveal",
                        {{"token", token}, {"purpose", purpose}, {"outcome", "tampered"}});
              KJ_FAIL_REQUIRE("the stored card failed authentication (tampered row or wrong key)");
            }
          } else {
            setRejected(result.initRejected(), schema::RejectCode::UNKNOWN_TOKEN,
                        "no card is stored under this token");
            log.info("vault.reveal",
                     {{"token", token}, {"purpose", purpose}, {"outcome", "unknown"}});
          }
        });
  }

private:
  kj::Own<Shard> shard;
};

class VaultPlugin final : public Plugin {
public:
  explicit VaultPlugin(Context& context)
      : shard(kj::refcounted<Shard>(context, context.config().string("key", "vault"),
                                    context.config().string("database", "vault"))) {}
  ~VaultPlugin() noexcept(false) { shard->detach(); }
  KJ_DISALLOW_COPY(VaultPlugin);

  capnp::Capability::Client service(kj::StringPtr name) override {
    if (name == SERVICE_NAME) return serve<VaultServer>(kj::addRef(*shard));
    KJ_REQUIRE(name == REVEAL_SERVICE_NAME,
               "vault provides only payments.vault and payments.vault.reveal", name);
    return serve<RevealServer>(kj::addRef(*shard));
  }

private:
  kj::Own<Shard> shard;
};

}  // namespace
}  // namespace payhost::plugins::vault

PAYHOST_PLUGIN(payhost::plugins::vault::VaultPlugin, "vault", "1.0.0",
               PAYHOST_SERVICE("payments.vault", payhost::schema::Vault),
               PAYHOST_SERVICE("payments.vault.reveal", payhost::schema::VaultReveal));
