//! Dead letters as the DLQ tool sees them (filled in by the DLQ tool work).
