//! sidestream-control-plane.
