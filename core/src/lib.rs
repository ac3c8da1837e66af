//! sidestream-core: the config model and every pure decision (see design.md).
