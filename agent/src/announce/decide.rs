//! What should be announced, from what the followed agents say: pure, so every rule is
//! tested without a network.
//!
//! - An entity is judged from outside: only agents in other sites count, and it stands
//!   **failed** when agents in `quorum` distinct such sites report it FAILED,
//!   **healthy** when agents in `quorum` distinct such sites report it anything else
//!   they observed (HEALTHY or DEGRADED), and **unclear** otherwise (feeds lost,
//!   agents disagreeing, nothing observed). A lost feed says nothing.
//! - A failed local entity's prefixes are withdrawn, each only while another entity
//!   serving it has not failed (as last known): the last healthy site is never withdrawn, and a prefix
//!   everything serving it has failed is announced anyway (the detector may be wrong;
//!   an unreachable prefix is certain harm).
//! - A healthy local entity's prefixes are announced. An unclear entity keeps what it
//!   had: losing the feeds changes nothing.
use std::collections::BTreeSet;

use super::config::{AnnounceConfig, Prefix};

/// What one agent's feed says of one entity right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Word {
    /// The feed is down, or has not delivered its first snapshot.
    Silent,
    /// No verdict, or UNKNOWN: not observed.
    Unobserved,
    Failed,
    /// HEALTHY or DEGRADED: it delivers.
    Delivers,
}

/// Where an entity stands with the agents outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Standing {
    /// Sites whose agents report it FAILED (at least `quorum`).
    Failed(Vec<String>),
    /// Sites whose agents see it deliver (at least `quorum`).
    Healthy(Vec<String>),
    Unclear,
}

/// `words[a][e]`: what agent `a` (in `cfg.agents` order) says of served entity `e`.
pub(super) fn standing(cfg: &AnnounceConfig, words: &[Vec<Word>], e: usize) -> Standing {
    let served = &cfg.served[e];
    let sites_saying = |word: Word| -> BTreeSet<&str> {
        cfg.agents
            .iter()
            .zip(words)
            .filter(|(a, w)| a.site != served.site() && w[e] == word)
            .map(|(a, _)| a.site.as_str())
            .collect()
    };
    let quorum = cfg.quorum as usize;
    let failed = sites_saying(Word::Failed);
    let delivers = sites_saying(Word::Delivers);
    let owned = |s: BTreeSet<&str>| s.into_iter().map(str::to_owned).collect();
    if failed.len() >= quorum {
        Standing::Failed(owned(failed))
    } else if delivers.len() >= quorum {
        Standing::Healthy(owned(delivers))
    } else {
        Standing::Unclear
    }
}

/// What should be announced now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    /// Per served entity: stands failed, or did and nothing since says otherwise.
    pub(super) failed: Vec<bool>,
    pub(super) standings: Vec<Standing>,
    /// The prefixes this gobgpd should announce.
    pub(super) wanted: BTreeSet<Prefix>,
    /// Of those, the ones announced although every local entity serving them failed:
    /// nothing else healthy serves them.
    pub(super) last_standing: BTreeSet<Prefix>,
}

/// The plan, given `failed_before` (the previous plan's `failed`; an unclear entity
/// keeps it).
pub(super) fn plan(cfg: &AnnounceConfig, words: &[Vec<Word>], failed_before: &[bool]) -> Plan {
    let standings: Vec<Standing> = (0..cfg.served.len())
        .map(|e| standing(cfg, words, e))
        .collect();
    let failed: Vec<bool> = standings
        .iter()
        .zip(failed_before)
        .map(|(s, &before)| match s {
            Standing::Failed(_) => true,
            Standing::Healthy(_) => false,
            Standing::Unclear => before,
        })
        .collect();
    let mut wanted = BTreeSet::new();
    let mut last_standing = BTreeSet::new();
    for (e, served) in cfg.served.iter().enumerate().filter(|(_, s)| s.local) {
        for &p in &served.prefixes {
            if !failed[e] {
                wanted.insert(p);
            } else if !served_elsewhere(cfg, &failed, e, p) {
                last_standing.insert(p);
            }
        }
    }
    // A prefix a local entity still serves is not announced "although failed".
    last_standing.retain(|p| !wanted.contains(p));
    wanted.extend(last_standing.iter().copied());
    Plan {
        failed,
        standings,
        wanted,
        last_standing,
    }
}

/// Whether an entity other than `e` that serves `p` has not failed (as last known:
/// with the feeds lost, the site users were moved to is still where they go).
fn served_elsewhere(cfg: &AnnounceConfig, failed: &[bool], e: usize, p: Prefix) -> bool {
    cfg.served
        .iter()
        .enumerate()
        .any(|(o, other)| o != e && other.prefixes.contains(&p) && !failed[o])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::announce::config::{FeedAgent, GobgpTarget, Served};

    fn served(entity: &str, local: bool) -> Served {
        Served {
            entity: entity.into(),
            prefixes: vec![VIP.parse::<Prefix>().unwrap()],
            local,
        }
    }

    /// dc-a (local) and dc-b (watched) serve one VIP; agents in dc-a, dc-b, dc-c.
    fn cfg(quorum: u32) -> AnnounceConfig {
        let agent = |site: &str| FeedAgent {
            endpoint: format!("http://{site}:7431"),
            site: site.into(),
        };
        AnnounceConfig {
            dry_run: false,
            quorum,
            startup_wait: Duration::from_secs(5),
            gobgp: GobgpTarget {
                endpoint: "http://127.0.0.1:50051".into(),
                next_hop_v4: [0u8; 4].into(),
                next_hop_v6: [0u8; 16].into(),
                resync: Duration::from_secs(2),
            },
            metrics: None,
            agents: vec![agent("dc-a"), agent("dc-b"), agent("dc-c")],
            served: vec![served("dc-a", true), served("dc-b", false)],
            tls_ca: None,
        }
    }

    use Word::{Delivers as D, Failed as F, Silent as S, Unobserved as U};

    const VIP: &str = "198.51.100.10/32";

    /// words per agent (dc-a, dc-b, dc-c), each [of dc-a, of dc-b]; what dc-a's plan
    /// announces, given whether dc-a stood failed before.
    fn run(cfg: &AnnounceConfig, words: [[Word; 2]; 3], failed_before: bool) -> Vec<String> {
        let words: Vec<Vec<Word>> = words.iter().map(|w| w.to_vec()).collect();
        plan(cfg, &words, &[failed_before, false])
            .wanted
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_site_failed_by_two_other_sites_is_withdrawn_while_the_other_is_healthy() {
        let c = cfg(2);
        assert_eq!(
            run(&c, [[D, D], [F, D], [F, D]], false),
            Vec::<String>::new()
        );
        let words: Vec<Vec<Word>> = [[D, D], [F, D], [F, D]]
            .iter()
            .map(|w| w.to_vec())
            .collect();
        let p = plan(&c, &words, &[false, false]);
        assert_eq!(
            p.standings[0],
            Standing::Failed(vec!["dc-b".into(), "dc-c".into()])
        );
        assert_eq!(p.failed, vec![true, false]);
    }

    #[test]
    fn its_own_agents_neither_fail_nor_save_a_site() {
        let c = cfg(2);
        // Agents inside dc-a see their site failed (or fine): not counted either way.
        assert_eq!(run(&c, [[F, D], [F, D], [D, D]], false), [VIP]);
        assert_eq!(
            run(&c, [[D, D], [F, D], [F, D]], false),
            Vec::<String>::new()
        );
    }

    #[test]
    fn one_site_alone_is_not_a_quorum() {
        let c = cfg(2);
        assert_eq!(run(&c, [[D, D], [F, D], [U, D]], false), [VIP]);
        assert_eq!(run(&c, [[D, D], [F, D], [S, D]], false), [VIP]);
        // With a quorum of one it is.
        assert_eq!(
            run(&cfg(1), [[D, D], [F, D], [S, D]], false),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_last_healthy_site_is_never_withdrawn() {
        let c = cfg(2);
        // dc-b is failed too (per dc-a's and dc-c's agents): dc-a stays announced.
        let words: Vec<Vec<Word>> = [[D, F], [F, D], [F, F]]
            .iter()
            .map(|w| w.to_vec())
            .collect();
        let p = plan(&c, &words, &[false, false]);
        assert_eq!(p.failed, vec![true, true]);
        assert_eq!(p.last_standing.len(), 1);
        assert_eq!(run(&c, [[D, F], [F, D], [F, F]], true), [VIP]);
        // dc-b unclear (its outside feeds lost): as last known, it serves.
        assert_eq!(
            run(&c, [[S, S], [F, D], [F, S]], false),
            Vec::<String>::new()
        );
    }

    #[test]
    fn lost_feeds_keep_what_is_announced() {
        let c = cfg(2);
        assert_eq!(run(&c, [[S, S], [S, S], [S, S]], false), [VIP]);
        assert_eq!(
            run(&c, [[S, S], [S, S], [S, S]], true),
            Vec::<String>::new()
        );
        assert_eq!(
            run(&c, [[D, D], [S, S], [F, D]], true),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_recovered_site_is_announced_again_once_a_quorum_sees_it_deliver() {
        let c = cfg(2);
        assert_eq!(
            run(&c, [[D, D], [D, D], [F, D]], true),
            Vec::<String>::new()
        );
        assert_eq!(run(&c, [[D, D], [D, D], [D, D]], true), [VIP]);
    }

    #[test]
    fn a_prefix_nothing_else_serves_stays_while_the_shared_one_moves() {
        let mut c = cfg(2);
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        c.served = vec![
            Served {
                entity: "dc-a/c1".into(),
                prefixes: vec![p(VIP), p("203.0.113.0/24")],
                local: true,
            },
            served("dc-b", false),
        ];
        // A cabinet is judged from outside its site; 203.0.113.0/24 is served nowhere
        // else and stays.
        assert_eq!(run(&c, [[F, D], [F, D], [F, D]], false), ["203.0.113.0/24"]);
        c.served[1].prefixes.push(p("203.0.113.0/24"));
        assert_eq!(
            run(&c, [[F, D], [F, D], [F, D]], false),
            Vec::<String>::new()
        );
    }
}
