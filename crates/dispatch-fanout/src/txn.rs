//! What the fan-out does when a transactional call fails, decided in one place and as librdkafka
//! defines its transactional errors: a *retriable* error means the call's work is still in
//! progress inside librdkafka (a commit that timed out stays in progress and refuses `abort` and
//! `begin` until the same call is made again), an error that *requires abort* means the
//! transaction can only be aborted, a *fatal* error means the producer is unusable.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The transactional call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnCall {
    /// `begin_transaction`.
    Begin,
    /// `send` of one record into the open transaction.
    Produce,
    /// `send_offsets_to_transaction`.
    SendOffsets,
    /// `commit_transaction` (including the flush rust-rdkafka makes first).
    Commit,
    /// `abort_transaction`.
    Abort,
}

impl TxnCall {
    /// A bounded label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            TxnCall::Begin => "begin",
            TxnCall::Produce => "produce",
            TxnCall::SendOffsets => "send_offsets",
            TxnCall::Commit => "commit",
            TxnCall::Abort => "abort",
        }
    }
}

/// What librdkafka says about an error, extracted from the error value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorTraits {
    /// The error code, when there is one.
    pub code: Option<RDKafkaErrorCode>,
    /// `rd_kafka_error_is_fatal` (or a fatal/fenced code).
    pub fatal: bool,
    /// `rd_kafka_error_is_retriable`: repeat the same call.
    pub retriable: bool,
    /// `rd_kafka_error_txn_requires_abort`.
    pub requires_abort: bool,
}

impl ErrorTraits {
    /// The traits of an error returned by a transactional call or by `send`.
    pub fn of(error: &KafkaError) -> Self {
        match error {
            KafkaError::Transaction(error) => ErrorTraits {
                code: Some(error.code()),
                fatal: error.is_fatal() || is_fatal_code(error.code()),
                retriable: error.is_retriable(),
                requires_abort: error.txn_requires_abort(),
            },
            // rust-rdkafka's commit_transaction flushes before it commits; a flush that timed
            // out changed no transaction state, so the commit may simply be made again.
            KafkaError::Flush(code) => ErrorTraits {
                code: Some(*code),
                fatal: is_fatal_code(*code),
                retriable: matches!(
                    code,
                    RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut
                ),
                requires_abort: false,
            },
            other => {
                let code = other.rdkafka_error_code();
                ErrorTraits {
                    code,
                    fatal: code.is_some_and(is_fatal_code),
                    retriable: false,
                    requires_abort: false,
                }
            }
        }
    }
}

/// Whether a new transactional producer under the same `transactional.id` recovers from a
/// transactional error: a fatal one that is not fencing — a producer librdkafka gave up on, such
/// as the sequence desynchronisation seen after a partition leader was killed (the broker-loss
/// scenario). A new producer fences the old one and aborts its open transaction, as a restart
/// would. Fencing means another process took over the id: this one must stop.
pub fn new_producer_recovers(traits: ErrorTraits) -> bool {
    traits.fatal
        && !matches!(
            traits.code,
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::TransactionCoordinatorFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        )
}

fn is_fatal_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::TransactionCoordinatorFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// A produce error that no retry can cure for this record: the record itself is the problem.
pub fn is_permanent_record_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::BadMessage
    )
}

/// The answer to a failed transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnAction {
    /// Make the same call again (bounded by the retry deadline).
    RetrySameCall,
    /// The record being produced can never be produced: abort, and quarantine its input record
    /// when the batch is read again.
    QuarantineRecord,
    /// Abort the transaction (repeating the abort while it is retriable) and read the batch
    /// again.
    AbortAndRewind,
    /// Stop the process with an error: only a new producer (a restart) can continue.
    Exit,
}

/// Decides what to do about `traits` returned by `call`.
pub fn decide(call: TxnCall, traits: ErrorTraits) -> TxnAction {
    if traits.fatal {
        return TxnAction::Exit;
    }
    if call == TxnCall::Produce {
        return match traits.code {
            Some(RDKafkaErrorCode::QueueFull) => TxnAction::RetrySameCall,
            Some(code) if is_permanent_record_error(code) => TxnAction::QuarantineRecord,
            _ if traits.retriable => TxnAction::RetrySameCall,
            _ => TxnAction::AbortAndRewind,
        };
    }
    if traits.retriable {
        return TxnAction::RetrySameCall;
    }
    match call {
        // An abort that can be neither repeated nor followed by anything else leaves the
        // producer in an unknown state.
        TxnCall::Abort => TxnAction::Exit,
        // No transaction is open yet: there is nothing to abort; a state error here is a bug a
        // restart clears.
        TxnCall::Begin if !traits.requires_abort => TxnAction::Exit,
        // `requires_abort`, and any other error of a call inside the transaction: the abort
        // decides (an abort that is refused other than retriably exits).
        _ => TxnAction::AbortAndRewind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits(code: RDKafkaErrorCode) -> ErrorTraits {
        ErrorTraits {
            code: Some(code),
            ..ErrorTraits::default()
        }
    }

    #[test]
    fn a_new_producer_recovers_from_fatal_errors_but_fencing() {
        let fatal = |code| ErrorTraits {
            fatal: true,
            ..traits(code)
        };
        assert!(new_producer_recovers(fatal(
            RDKafkaErrorCode::OutOfOrderSequenceNumber
        )));
        assert!(new_producer_recovers(fatal(RDKafkaErrorCode::Fatal)));
        for fenced in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::Fenced,
            RDKafkaErrorCode::TransactionCoordinatorFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
        ] {
            assert!(!new_producer_recovers(fatal(fenced)), "{fenced:?}");
        }
        // Not fatal: the transaction is aborted or the call made again, the producer kept.
        assert!(!new_producer_recovers(traits(
            RDKafkaErrorCode::OutOfOrderSequenceNumber
        )));
    }

    #[test]
    fn a_commit_that_timed_out_is_made_again_never_aborted() {
        let timed_out = ErrorTraits {
            retriable: true,
            ..traits(RDKafkaErrorCode::OperationTimedOut)
        };
        assert_eq!(decide(TxnCall::Commit, timed_out), TxnAction::RetrySameCall);
        for call in [TxnCall::Begin, TxnCall::SendOffsets, TxnCall::Abort] {
            assert_eq!(
                decide(call, timed_out),
                TxnAction::RetrySameCall,
                "{call:?}"
            );
        }
        // rust-rdkafka's flush before the commit: a timeout there is repeated as well.
        let flush = ErrorTraits::of(&KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        assert_eq!(decide(TxnCall::Commit, flush), TxnAction::RetrySameCall);
    }

    #[test]
    fn abortable_errors_abort_and_rewind() {
        let abortable = ErrorTraits {
            requires_abort: true,
            ..traits(RDKafkaErrorCode::MessageTimedOut)
        };
        for call in [
            TxnCall::Begin,
            TxnCall::Produce,
            TxnCall::SendOffsets,
            TxnCall::Commit,
        ] {
            assert_eq!(
                decide(call, abortable),
                TxnAction::AbortAndRewind,
                "{call:?}"
            );
        }
    }

    #[test]
    fn fatal_and_fenced_errors_exit() {
        let fatal = ErrorTraits {
            fatal: true,
            retriable: true,
            requires_abort: true,
            ..traits(RDKafkaErrorCode::Fatal)
        };
        for call in [
            TxnCall::Begin,
            TxnCall::Produce,
            TxnCall::SendOffsets,
            TxnCall::Commit,
            TxnCall::Abort,
        ] {
            assert_eq!(decide(call, fatal), TxnAction::Exit, "{call:?}");
        }
        let fenced = ErrorTraits::of(&KafkaError::MessageProduction(
            RDKafkaErrorCode::ProducerFenced,
        ));
        assert!(fenced.fatal);
        assert_eq!(decide(TxnCall::Produce, fenced), TxnAction::Exit);
    }

    #[test]
    fn an_abort_refused_other_than_retriably_exits() {
        assert_eq!(
            decide(TxnCall::Abort, traits(RDKafkaErrorCode::State)),
            TxnAction::Exit
        );
        assert_eq!(
            decide(TxnCall::Begin, traits(RDKafkaErrorCode::State)),
            TxnAction::Exit
        );
    }

    #[test]
    fn a_record_that_can_never_be_produced_is_quarantined_and_a_full_queue_waited_for() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            let traits = ErrorTraits::of(&KafkaError::MessageProduction(code));
            assert_eq!(
                decide(TxnCall::Produce, traits),
                TxnAction::QuarantineRecord,
                "{code:?}"
            );
        }
        let full = ErrorTraits::of(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
        assert_eq!(decide(TxnCall::Produce, full), TxnAction::RetrySameCall);
        // Anything else from produce: abort and read again (the abort decides if it can't).
        let unknown = ErrorTraits::of(&KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownPartition,
        ));
        assert_eq!(decide(TxnCall::Produce, unknown), TxnAction::AbortAndRewind);
        // A size error on commit is the transaction's, not a record's: abort.
        assert_eq!(
            decide(
                TxnCall::Commit,
                traits(RDKafkaErrorCode::MessageSizeTooLarge)
            ),
            TxnAction::AbortAndRewind
        );
    }
}
