//! sidestream-push.
