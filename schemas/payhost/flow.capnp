@0xfb21c5414f8cff6e;
# The payment flow a merchant calls: `Payments`, served by plugins/payments as
# "payments.payments". It screens with `FraudScreen`, authorizes with `CardProcessor`, records
# pending and posted transfers in the `Ledger`, converts with `Fx` when the settlement currency
# differs, and owns the payment's state machine and idempotency keys.
#
# States and transitions (anything else is rejected with `invalidState`):
#   (new)              -> authorized            authorize approved
#   (new)              -> captured              purchase approved
#   (new)              -> failed                authorize or purchase declined
#   (new)              -> unknown               the card processor's answer was `unknown`
#   unknown            -> authorized | captured | expired | failed   sync, as the card says
#   authorized         -> partiallyCaptured     capture of less than the rest
#   authorized | partiallyCaptured -> captured  capture of the whole rest
#   authorized         -> voided                void (nothing captured yet)
#   authorized         -> expired               the authorization window closes
# After the window closes nothing more can be captured or voided; a partially captured payment
# keeps its state and its captured part stays refundable.
#   captured | partiallyCaptured | partiallyRefunded -> partiallyRefunded | refunded   refund
# After the first refund the uncaptured rest of a partially captured payment is released.
#
# Idempotency: every mutating call carries a key (1 to 255 bytes). The same key with the same
# request returns the first result (errors included); with a different request it is rejected
# with `idempotencyConflict` and changes nothing. A duplicate that arrives while the first is
# still running gets `notAttempted` (retry it to read the first result); it never runs twice.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("payhost::schema");

using PaymentsSchema = import "payments.capnp";
using Money = PaymentsSchema.Money;
using PaymentResult = PaymentsSchema.PaymentResult;
using TransactionState = PaymentsSchema.TransactionState;

struct PaymentRequest {
  merchantId @0 :Text;
  amount @1 :Money;
  # Positive; charged to the card in this currency.
  cardToken @2 :Text;
  # A vault token.
  idempotencyKey @3 :Text;
  settlementCurrency @4 :Text;
  # What the merchant is paid in; empty: the amount's currency. Converted with Fx at capture.
  cardCountry @5 :Text;
  ipCountry @6 :Text;
}

struct PaymentOperation {
  paymentId @0 :Text;
  amount @1 :Money;
  # Capture and refund: positive, in the payment's currency. Void: ignored.
  idempotencyKey @2 :Text;
}

struct Payment {
  paymentId @0 :Text;
  merchantId @1 :Text;
  state @2 :TransactionState;
  authorized @3 :Money;
  captured @4 :Money;
  refunded @5 :Money;
  settled @6 :Money;
  # Captured minus refunded, in the settlement currency.
  exists @7 :Bool;
}

interface Payments {
  authorize @0 (request :PaymentRequest) -> (result :PaymentResult);
  capture @1 (request :PaymentOperation) -> (result :PaymentResult);
  voidPayment @2 (request :PaymentOperation) -> (result :PaymentResult);
  refund @3 (request :PaymentOperation) -> (result :PaymentResult);
  purchase @4 (request :PaymentRequest) -> (result :PaymentResult);
  sync @5 (paymentId :Text) -> (payment :Payment);
  # The payment as recorded (no idempotency key). A payment in state `unknown` is settled first:
  # the card processor's `sync` says what happened, the ledger records it, the new state is
  # stored durably, and only then is it answered. Still unknown at the card: answered `unknown`.
}
