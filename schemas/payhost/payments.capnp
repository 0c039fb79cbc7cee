@0xf0f2aeabd87c4194;
# Payment contracts: the services payment plugins provide and clients call.
#
# Evolution rule: add fields, methods and enumerants with higher ordinals only; never renumber,
# never reuse an ordinal, never change a type. A union's first member is `unspecified`, so a
# plugin that forgot to answer is told apart from a real outcome.
#
# Card data: requests carry vault tokens, never card numbers (the vault service is the only
# place a card number enters, and it never leaves it).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("payhost::schema");

struct Money {
  # An amount of money: a signed count of the currency's minor unit (cents for EUR, yen for JPY,
  # fils for KWD) and the ISO 4217 alphabetic code. Never a float.
  minorUnits @0 :Int64;
  currency @1 :Text;
  # Three upper-case letters, e.g. "EUR".
}

struct MetadataEntry {
  key @0 :Text;
  value @1 :Text;
}

enum TransactionState {
  # States of a card transaction. Allowed transitions (anything else is rejected with
  # `invalidState`):
  #   authorized -> partiallyCaptured | captured | voided | expired
  #   partiallyCaptured -> captured (the remainder may no longer be captured after a refund)
  #   captured | partiallyCaptured -> partiallyRefunded | refunded
  #   partiallyRefunded -> refunded
  unspecified @0;
  authorized @1;
  partiallyCaptured @2;
  captured @3;
  voided @4;
  partiallyRefunded @5;
  refunded @6;
  expired @7;
  failed @8;
}

enum DeclineCode {
  unspecified @0;
  doNotHonor @1;
  insufficientFunds @2;
  stolenCard @3;
  expiredCard @4;
  amountLimitExceeded @5;
  suspectedFraud @6;
}

enum Advice {
  # What the merchant should do after a decline.
  unspecified @0;
  doNotRetry @1;
  retryLater @2;
  contactIssuer @3;
}

enum RejectCode {
  # Why a request was refused before anything happened. Never retryable as is.
  unspecified @0;
  invalidRequest @1;
  idempotencyConflict @2;
  # The key was used before with different parameters.
  invalidState @3;
  # The transaction's state does not allow the operation (e.g. capture after void).
  unknownTransaction @4;
  amountExceedsAvailable @5;
  # Capture above the authorized amount, or refund above the captured amount.
  currencyMismatch @6;
}

struct Approval {
  transactionId @0 :Text;
  authCode @1 :Text;
  # Six characters, as issued by the (simulated) issuer.
  amount @2 :Money;
  # The amount this operation approved.
  state @3 :TransactionState;
  # The transaction's state after the operation.
}

struct Decline {
  code @0 :DeclineCode;
  reason @1 :Text;
  advice @2 :Advice;
  transactionId @3 :Text;
}

struct Rejection {
  code @0 :RejectCode;
  message @1 :Text;
}

struct PaymentResult {
  # The outcome of one payment operation. Business outcomes are values, not exceptions; an
  # exception from a call means the host or transport failed (overloaded, disconnected, ...).
  union {
    unspecified @0 :Void;
    approved @1 :Approval;
    pending @2 :Text;
    # Accepted, outcome follows; the text is the transaction id to `sync` on.
    declined @3 :Decline;
    rejected @4 :Rejection;
    notAttempted @5 :Text;
    # Nothing happened; safe to retry with the same idempotency key. The text says why.
    unknown @6 :Text;
    # The outcome is not known (e.g. the issuer timed out). Settle it with `sync` on the
    # transaction id in the text; never resubmit.
  }
}

struct AuthorizeRequest {
  merchantId @0 :Text;
  amount @1 :Money;
  # Must be positive.
  cardToken @2 :Text;
  # A vault token.
  idempotencyKey @3 :Text;
  # At most 255 bytes. The same key with the same request returns the first result; with a
  # different request it is rejected with `idempotencyConflict`.
  metadata @4 :List(MetadataEntry);
}

struct CaptureRequest {
  transactionId @0 :Text;
  amount @1 :Money;
  # At most the authorized amount not yet captured; partial captures allowed.
  idempotencyKey @2 :Text;
}

struct VoidRequest {
  transactionId @0 :Text;
  idempotencyKey @1 :Text;
}

struct RefundRequest {
  transactionId @0 :Text;
  amount @1 :Money;
  # Partial and repeated refunds allowed, never more than captured in total.
  idempotencyKey @2 :Text;
}

interface CardProcessor {
  # Authorizes and settles card payments with an issuer.
  authorize @0 (request :AuthorizeRequest) -> (result :PaymentResult);
  capture @1 (request :CaptureRequest) -> (result :PaymentResult);
  voidAuthorization @2 (request :VoidRequest) -> (result :PaymentResult);
  refund @3 (request :RefundRequest) -> (result :PaymentResult);
  sync @4 (transactionId :Text) -> (result :PaymentResult);
  # Ask for the current state of a transaction, e.g. after an `unknown` outcome.
}

# ===========================================================================================
# Fraud screening

struct ScreenRequest {
  merchantId @0 :Text;
  amount @1 :Money;
  cardToken @2 :Text;
  cardCountry @3 :Text;
  # ISO 3166-1 alpha-2 of the issuing country, if known.
  ipCountry @4 :Text;
}

enum FraudDecision {
  unspecified @0;
  allow @1;
  review @2;
  deny @3;
}

struct FraudVerdict {
  decision @0 :FraudDecision;
  score @1 :UInt32;
  # 0 (clean) to 1000 (certain fraud).
  firedRules @2 :List(Text);
}

interface FraudScreen {
  screen @0 (request :ScreenRequest) -> (verdict :FraudVerdict);
}

# ===========================================================================================
# Foreign exchange

struct FxQuote {
  quoteId @0 :Text;
  source @1 :Money;
  target @2 :Money;
  rate @3 :Text;
  # Exact decimal string, e.g. "1.0842".
  expiresAtUnixMs @4 :Int64;
}

struct FxResult {
  union {
    unspecified @0 :Void;
    quote @1 :FxQuote;
    rejected @2 :Rejection;
  }
}

interface Fx {
  quote @0 (source :Money, targetCurrency :Text) -> (result :FxResult);
}

# ===========================================================================================
# Ledger

struct TransferRequest {
  transferId @0 :Text;
  # At most one transfer per id; a repeat with the same fields returns the first result.
  debitAccount @1 :Text;
  creditAccount @2 :Text;
  amount @3 :Money;
}

struct LedgerResult {
  union {
    unspecified @0 :Void;
    posted @1 :Text;
    # The transfer id.
    rejected @2 :Rejection;
  }
}

struct Balance {
  accountId @0 :Text;
  debits @1 :Money;
  credits @2 :Money;
}

interface Ledger {
  transfer @0 (request :TransferRequest) -> (result :LedgerResult);
  balance @1 (accountId :Text, currency :Text) -> (balance :Balance);
}
