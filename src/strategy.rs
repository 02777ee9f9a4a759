//! [`Strategy`]: which algorithm decides, for a layer and for each limit of a set.

/// Which algorithm decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Admit up to the quota (`rate × window`) per key; refuse the rest with a retry time
    /// (`429` in the layer).
    #[default]
    Absolute,
    /// Shed load probabilistically between the quota and the hard limit (quota × hard
    /// factor); a shed request is `503` in the layer, with the suppression factor.
    Suppressed,
}
