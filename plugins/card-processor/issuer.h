// A simulated card issuer in test mode: the business rules of the `card-processor` plugin, in
// plain C++/KJ types so they can be tested without Cap'n Proto (card-processor.cpp is the glue).
//
// Test card tokens and amounts decide each outcome deterministically; README.md beside this file
// has the table. An `Issuer` keeps transactions and idempotency records in memory, bounded: a
// transaction is forgotten `retention` after its last operation or, while it can still be captured
// or voided, after its authorization window closes; an idempotency record `retention` after it was
// made; beyond `maxTransactions` the ones due soonest go first whatever their state. Every outcome
// is a value: nothing here throws for a decline or a bad request. Requests are views that must
// outlive the call only; results own their strings.
//
// Not thread-safe: one thread at a time. The plugin shares one `Issuer` between all its shards
// behind a lock (shared-issuer.h).

#ifndef PAYHOST_PLUGINS_CARD_PROCESSOR_ISSUER_H_
#define PAYHOST_PLUGINS_CARD_PROCESSOR_ISSUER_H_

#include <kj/array.h>
#include <kj/common.h>
#include <kj/map.h>
#include <kj/one-of.h>
#include <kj/string.h>
#include <kj/time.h>

#include <cstdint>
#include <deque>
#include <queue>
#include <vector>

namespace payhost::plugins::card {

enum class TransactionState {
  AUTHORIZED,
  PARTIALLY_CAPTURED,
  CAPTURED,
  VOIDED,
  PARTIALLY_REFUNDED,
  REFUNDED,
  EXPIRED,
  FAILED,  // The authorization was declined.
};

enum class DeclineCode {
  DO_NOT_HONOR,
  INSUFFICIENT_FUNDS,
  STOLEN_CARD,
  EXPIRED_CARD,
  AMOUNT_LIMIT_EXCEEDED,
};

enum class Advice { DO_NOT_RETRY, RETRY_LATER, CONTACT_ISSUER };

enum class RejectCode {
  INVALID_REQUEST,
  IDEMPOTENCY_CONFLICT,
  INVALID_STATE,
  UNKNOWN_TRANSACTION,
  AMOUNT_EXCEEDS_AVAILABLE,
  CURRENCY_MISMATCH,
};

// The schema's enumerant names ("insufficientFunds"), so logs and the wire agree.
kj::StringPtr nameOf(TransactionState state);
kj::StringPtr nameOf(DeclineCode code);
kj::StringPtr nameOf(Advice advice);
kj::StringPtr nameOf(RejectCode code);
inline kj::StringPtr KJ_STRINGIFY(TransactionState state) {
  return nameOf(state);
}
inline kj::StringPtr KJ_STRINGIFY(DeclineCode code) {
  return nameOf(code);
}
inline kj::StringPtr KJ_STRINGIFY(Advice advice) {
  return nameOf(advice);
}
inline kj::StringPtr KJ_STRINGIFY(RejectCode code) {
  return nameOf(code);
}

// Limits on requests; anything beyond them is rejected with INVALID_REQUEST.
constexpr size_t MAX_ID_BYTES = 255;  // merchant ids, idempotency keys, transaction ids
constexpr size_t MAX_TOKEN_BYTES = 128;
constexpr size_t MAX_METADATA_ENTRIES = 50;
constexpr size_t MAX_METADATA_KEY_BYTES = 64;
constexpr size_t MAX_METADATA_VALUE_BYTES = 512;

// ---------------------------------------------------------------------------------------------
// Requests: views into the caller's data.

struct MetadataEntry {
  kj::StringPtr key;
  kj::StringPtr value;
};

struct AuthorizeRequest {
  kj::StringPtr merchantId;
  int64_t amount = 0;  // Minor units of `currency`.
  kj::StringPtr currency;
  kj::StringPtr cardToken;
  kj::StringPtr idempotencyKey;
  kj::ArrayPtr<const MetadataEntry> metadata = nullptr;
};

struct CaptureRequest {
  kj::StringPtr transactionId;
  int64_t amount = 0;
  kj::StringPtr currency;
  kj::StringPtr idempotencyKey;
};

struct VoidRequest {
  kj::StringPtr transactionId;
  kj::StringPtr idempotencyKey;
};

struct RefundRequest {
  kj::StringPtr transactionId;
  int64_t amount = 0;
  kj::StringPtr currency;
  kj::StringPtr idempotencyKey;
};

// ---------------------------------------------------------------------------------------------
// Results: owned values, mirroring `PaymentResult` in payments.capnp.

struct Money {
  int64_t minorUnits = 0;
  kj::String currency;
};

struct Approval {
  kj::String transactionId;
  kj::String authCode;
  Money amount;            // What this operation approved (for `sync`, the authorized amount).
  TransactionState state;  // The transaction's state after the operation.
};

struct Decline {
  DeclineCode code;
  Advice advice;
  kj::String reason;
  kj::String transactionId;
};

// Refused before anything happened. The message never repeats the card token.
struct Rejection {
  RejectCode code;
  kj::String message;
};

// The issuer did not answer in time: the outcome is unknown to the caller, who must `sync` on
// the transaction id rather than resubmit.
struct Unknown {
  kj::String transactionId;
};

using Result = kj::OneOf<Approval, Decline, Rejection, Unknown>;

// Results are replayed for idempotent retries, so they must be copied out explicitly.
Result clone(const Result& result);

struct Outcome {
  explicit Outcome(Result result) : result(kj::mv(result)) {}

  Result result;

  // The transaction the operation concerned when the issuer knows it (an id it issued, so safe
  // to log); null for unknown ids and requests refused before a transaction was found.
  kj::Maybe<kj::String> transactionId;

  // How long the issuer takes to answer (the slow test card): deliver `result` only after it.
  // The operation has already taken effect.
  kj::Duration delay = 0 * kj::SECONDS;

  // Whether `result` is the remembered result of an earlier call with the same idempotency key.
  bool replayed = false;
};

// ---------------------------------------------------------------------------------------------
// Helpers shared with the glue and tests.

// Three upper-case ASCII letters.
bool isValidCurrency(kj::StringPtr currency);

// Digits, spaces and dashes only, with at least one digit: what a card number looks like. Such
// a value is rejected without being echoed or logged anywhere.
bool looksLikeCardNumber(kj::StringPtr token);

// `token` when it is a well-formed vault token that cannot hold a card number (no run of 12 or
// more digits), otherwise "[redacted]". The only form in which a token may be logged.
kj::StringPtr tokenForLog(kj::StringPtr token KJ_LIFETIMEBOUND);

// `merchantId` when valid (so free of spaces and control characters), otherwise "[invalid]".
kj::StringPtr merchantForLog(kj::StringPtr merchantId KJ_LIFETIMEBOUND);

// The six-character authorization code the simulated issuer derives from an idempotency key:
// deterministic, so a test run is reproducible.
kj::String authCodeFor(kj::StringPtr idempotencyKey);

// ---------------------------------------------------------------------------------------------

class Issuer final {
public:
  // The rules. Instances of the plugin whose Options are equal share one issuer.
  struct Options {
    // Authorizations above this many minor units are declined AMOUNT_LIMIT_EXCEEDED.
    int64_t maxAmountMinor = 100'000'000;
    // How long an authorization may be captured or voided.
    kj::Duration authWindow = 7 * kj::DAYS;
    // How long the slow test card takes to answer.
    kj::Duration slowDelay = 2 * kj::SECONDS;
    // How long a transaction is kept after its last operation (or after its authorization
    // window closes, while it may still be captured or voided), and an idempotency key's first
    // answer after it was made.
    kj::Duration retention = 24 * kj::HOURS;
    // At most this many transactions, and this many idempotency records per operation, are
    // kept; beyond it the oldest are forgotten even if still open.
    size_t maxTransactions = 100'000;

    bool operator==(const Options& other) const = default;
  };

  // Transaction ids are `txn_<idEpoch in hexadecimal>_<n>`, n counting from 1: an epoch drawn at
  // random for each new issuer keeps its ids apart from those of earlier issuers (another
  // process, an earlier plugin version), and tells an id it has forgotten from one it never
  // issued.
  explicit Issuer(Options options, uint64_t idEpoch = 0);
  KJ_DISALLOW_COPY(Issuer);

  // `now` is the wall-clock time of the call: authorizations expire `authWindow` after theirs.
  [[nodiscard]] Outcome authorize(const AuthorizeRequest& request, kj::Date now);
  // Authorize and capture the whole amount in one step: an approval ends CAPTURED. Same test
  // cards and amount rules as `authorize`; its idempotency keys are separate from authorize's.
  [[nodiscard]] Outcome purchase(const AuthorizeRequest& request, kj::Date now);
  [[nodiscard]] Outcome capture(const CaptureRequest& request, kj::Date now);
  [[nodiscard]] Outcome voidAuthorization(const VoidRequest& request, kj::Date now);
  [[nodiscard]] Outcome refund(const RefundRequest& request, kj::Date now);

  // The transaction's current state: an Approval (amount = the authorized amount) for an
  // authorization the issuer approved, the Decline for one it declined.
  [[nodiscard]] Outcome sync(kj::StringPtr transactionId, kj::Date now);

  const Options& options() const { return options_; }
  uint64_t idEpoch() const { return idEpoch_; }

  // How many transactions and idempotency records are held now, for tests of the bounds.
  size_t transactionsHeldForTest() const { return transactions.size(); }
  size_t recordsHeldForTest() const;

private:
  enum class Operation { AUTHORIZE, CAPTURE, VOID, REFUND, PURCHASE };
  static constexpr size_t OPERATION_COUNT = 5;

  struct Transaction {
    kj::String id;
    kj::String authCode;
    kj::String currency;
    int64_t authorized;
    int64_t captured = 0;
    int64_t refunded = 0;
    TransactionState state;
    kj::Date authorizedAt;
    kj::Maybe<Decline> decline;  // Set when state is FAILED.
    kj::Date lastActivity;       // The last operation that changed it.
    kj::Date forgetAt;           // When `forget` may drop it (see `forgetTime`).
  };

  // A transaction's turn to be forgotten. A later operation schedules it again; the earlier
  // entry is then stale (its time no longer matches) and is skipped when it comes up.
  struct Due {
    kj::Date at;
    uint64_t sequence;  // Breaks ties: of two due at once, the one scheduled first goes first.
    kj::String id;
    bool operator>(const Due& other) const {
      return at > other.at || (at == other.at && sequence > other.sequence);
    }
  };

  // The first answer to an idempotency key, with the parameters it answered.
  struct Remembered {
    kj::String parameters;
    Result result;
    kj::Maybe<kj::String> transactionId;
    kj::Date at;
  };

  struct RecordRef {
    Operation operation;
    kj::String key;
  };

  kj::Maybe<Outcome> recall(Operation operation, kj::StringPtr key, kj::StringPtr parameters);
  void remember(Operation operation, kj::StringPtr key, kj::String parameters,
                const Outcome& outcome, kj::Date now);

  Outcome authorizeOrPurchase(Operation operation, const AuthorizeRequest& request, kj::Date now);
  // `captureAll`: a purchase, which captures the whole amount when it is approved.
  Outcome decideAuthorization(const AuthorizeRequest& request, kj::Date now, bool captureAll);
  Outcome decideCapture(const CaptureRequest& request, kj::Date now);
  Outcome decideVoid(const VoidRequest& request, kj::Date now);
  Outcome decideRefund(const RefundRequest& request, kj::Date now);

  // Finds a transaction and moves an authorization past its window to EXPIRED.
  kj::Maybe<Transaction&> find(kj::StringPtr transactionId, kj::Date now);
  // The rejection for an id `find` did not find: an id this issuer issued and has forgotten
  // says so, any other is simply unknown.
  Outcome notFound(kj::StringPtr transactionId) const;
  // Forgets what the bounds in Options allow; called by every operation. O(log n) amortized.
  void forget(kj::Date now);
  // `retention` after its last change: the last operation, or the closing of the authorization
  // window while it may still be captured or voided.
  kj::Date forgetTime(const Transaction& transaction) const;
  // Sets `forgetAt` after an operation changed the transaction, and queues it.
  void schedule(Transaction& transaction);
  bool windowClosed(const Transaction& transaction, kj::Date now) const;

  Options options_;
  uint64_t idEpoch_;
  // What ids start with: "txn_<idEpoch>_".
  kj::String idPrefix;
  uint64_t transactionCount = 0;
  kj::HashMap<kj::String, Transaction> transactions;
  kj::HashMap<kj::String, Remembered> remembered[OPERATION_COUNT];
  // Transactions, soonest to be forgotten first.
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> dueQueue;
  uint64_t scheduled = 0;
  // Idempotency records, oldest first (never changed once made, so exactly in age order).
  std::deque<RecordRef> recordQueue;
};

}  // namespace payhost::plugins::card

#endif  // PAYHOST_PLUGINS_CARD_PROCESSOR_ISSUER_H_
