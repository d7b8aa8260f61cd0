//! Mintgate's tonic services and the one mapping of domain errors to gRPC Status.
