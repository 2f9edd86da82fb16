//! The one place where internal errors become Kafka error codes.
//!
//! Each layer keeps its own typed error; handlers call these functions at the boundary.
//! Anything unexpected becomes UNKNOWN_SERVER_ERROR and is logged here.

use kafka_protocol::error::ResponseError as E;

use crate::catalog::CatalogError;
use crate::log_budget::{LogBudget, within_budget};
use crate::storage::StorageError;

/// Storage I/O errors of requests logged per minute (a full disk fails every produce).
static IO_ERRORS: LogBudget = LogBudget::new(30);

pub fn storage_code(e: &StorageError) -> i16 {
    match e {
        StorageError::CorruptRecord { .. } => E::CorruptMessage.code(),
        StorageError::InvalidRecord { .. } => E::InvalidRecord.code(),
        StorageError::InvalidTimestamp { .. } => E::InvalidTimestamp.code(),
        StorageError::MessageTooLarge { .. } => E::MessageTooLarge.code(),
        StorageError::LargerThanSegment { .. } => E::RecordListTooLarge.code(),
        StorageError::OffsetOutOfRange { .. } => E::OffsetOutOfRange.code(),
        StorageError::OutOfOrderSequence { .. } => E::OutOfOrderSequenceNumber.code(),
        StorageError::InvalidProducerEpoch { .. } => E::InvalidProducerEpoch.code(),
        StorageError::OutsideTransaction { .. } => E::InvalidTxnState.code(),
        StorageError::LostRecords { .. } | StorageError::Failed { .. } => {
            E::KafkaStorageError.code()
        }
        StorageError::OpenFiles { .. } => {
            within_budget!(IO_ERRORS, error, error = %e, "a segment roll refused");
            E::KafkaStorageError.code()
        }
        StorageError::Sync { .. } => {
            within_budget!(IO_ERRORS, error, error = %e, "storage I/O error");
            E::KafkaStorageError.code()
        }
        StorageError::Io { .. } => {
            // A full disk fails every produce request: said within a budget.
            within_budget!(IO_ERRORS, error, error = %e, "storage I/O error");
            E::KafkaStorageError.code()
        }
        #[allow(unreachable_patterns)]
        other => {
            tracing::error!(error = %other, "unexpected storage error");
            E::UnknownServerError.code()
        }
    }
}

pub fn catalog_code(e: &CatalogError) -> i16 {
    match e {
        CatalogError::TopicExists(_) => E::TopicAlreadyExists.code(),
        CatalogError::UnknownTopic(_) => E::UnknownTopicOrPartition.code(),
        CatalogError::InvalidTopicName { .. } => E::InvalidTopicException.code(),
        CatalogError::TopicCollides { .. } => E::InvalidTopicException.code(),
        CatalogError::InvalidPartitions { .. } => E::InvalidPartitions.code(),
        CatalogError::InvalidReplicationFactor { .. } => E::InvalidReplicationFactor.code(),
        CatalogError::InvalidConfig { .. } => E::InvalidConfig.code(),
        // Not one of Kafka's errors: a limit of this broker, which asking again does not lift.
        CatalogError::OpenFiles { .. } => E::PolicyViolation.code(),
        CatalogError::Storage(s) => storage_code(s),
        CatalogError::Meta(m) => {
            tracing::error!(error = %m, "metadata error");
            E::KafkaStorageError.code()
        }
    }
}
