//! Hyper-parameter sweeps: a spec expanded into candidate jobs on one
//! dataset (`spec`), submitted and cancelled as a whole (`service`), ranked
//! in a leaderboard (`view`), and driven to its end by the `supervisor`
//! (successive halving, budget, winner promoted to an alias). Candidates
//! are ordinary jobs of the queue, linked by `jobs.sweep_id`; the queue's
//! claim honours the sweep's `max_parallel` (`store::jobs::claim_next`).

pub mod service;
pub mod spec;
pub mod supervisor;
pub mod view;
