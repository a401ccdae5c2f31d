//! Parsers for the amounts, budgets and durations the payment commands take
//! (`10000sat`, `5000sat/month`, `30d`), shared by `cairn wallet|ln|nwc`.

use std::str::FromStr;

use anyhow::{anyhow, bail, ensure, Context, Result};
use cairn_payments::nwc::BudgetRenewal;

const MSAT_PER_SAT: u64 = 1_000;
const SAT_PER_BTC: u64 = 100_000_000;

/// An amount in millisatoshis: `2000sat`, `2000sats`, `2000` (satoshis),
/// `1500msat`, `0.001btc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    /// Millisatoshis.
    pub msat: u64,
}

impl Amount {
    /// Whole satoshis; an amount with a fraction of a satoshi is refused.
    pub fn sat(&self) -> Result<u64> {
        ensure!(
            self.msat % MSAT_PER_SAT == 0,
            "{} msat is not a whole number of satoshis",
            self.msat
        );
        Ok(self.msat / MSAT_PER_SAT)
    }
}

impl FromStr for Amount {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase().replace('_', "");
        let (num, unit) = split_unit(&t);
        let msat = match unit {
            "msat" | "msats" => num.parse::<u64>().ok(),
            "" | "sat" | "sats" => num
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(MSAT_PER_SAT)),
            "btc" => btc_to_sat(num).and_then(|n| n.checked_mul(MSAT_PER_SAT)),
            _ => None,
        };
        let msat = msat
            .ok_or_else(|| anyhow!("`{s}` is not an amount (e.g. 2000sat, 1500msat, 0.001btc)"))?;
        ensure!(msat > 0, "the amount must be positive");
        Ok(Self { msat })
    }
}

fn split_unit(t: &str) -> (&str, &str) {
    let at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    (t[..at].trim(), t[at..].trim())
}

/// `0.001` BTC → 100000 sat, exactly (no floating point).
fn btc_to_sat(num: &str) -> Option<u64> {
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.len() > 8 || (whole.is_empty() && frac.is_empty()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac_sat: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<8}").parse().ok()?
    };
    whole.checked_mul(SAT_PER_BTC)?.checked_add(frac_sat)
}

/// A budget: `10000sat/month` (periods: daily, weekly, monthly, yearly,
/// never, or day, week, month, year); without a period it never renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Satoshis per period.
    pub sat: u64,
    /// When it starts over.
    pub period: BudgetRenewal,
}

impl FromStr for Budget {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (amount, period) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                BudgetRenewal::from_str(p.trim().to_ascii_lowercase().as_str())
                    .map_err(|e| anyhow!("{e} (use daily, weekly, monthly, yearly or never)"))?,
            ),
            None => (s, BudgetRenewal::Never),
        };
        let sat = Amount::from_str(amount)
            .and_then(|a| a.sat())
            .with_context(|| format!("budget `{s}`"))?;
        Ok(Self { sat, period })
    }
}

/// A duration in seconds: `30d`, `12h`, `45m`, `90s`, `2w`, or plain seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let (num, unit) = split_unit(&t);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("`{s}` is not a duration (e.g. 30d, 12h, 45m)"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("`{s}`: unknown unit `{unit}` (use s, m, h, d or w)"),
    };
    let secs = n
        .checked_mul(factor)
        .ok_or_else(|| anyhow!("`{s}` is too long"))?;
    ensure!(secs > 0, "the duration must be positive");
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        let a = |s: &str| Amount::from_str(s).map(|a| a.msat);
        assert_eq!(a("10000sat").unwrap(), 10_000_000);
        assert_eq!(a("5000sats").unwrap(), 5_000_000);
        assert_eq!(a(" 2_000 SAT ").unwrap(), 2_000_000);
        assert_eq!(a("2000").unwrap(), 2_000_000);
        assert_eq!(a("1500msat").unwrap(), 1_500);
        assert_eq!(a("0.001btc").unwrap(), 100_000_000);
        assert_eq!(a("1btc").unwrap(), 100_000_000_000);
        assert_eq!(a("0.00000001btc").unwrap(), 1_000);
        assert!(a("0.000000001btc").is_err(), "below one satoshi");
        assert!(a("0sat").is_err());
        assert!(a("-5sat").is_err());
        assert!(a("5 dollars").is_err());
        assert!(a("sat").is_err());
        assert!(a("99999999999999999999sat").is_err(), "overflow");
        assert!(Amount::from_str("1500msat").unwrap().sat().is_err());
        assert_eq!(Amount::from_str("2sat").unwrap().sat().unwrap(), 2);
    }

    #[test]
    fn budgets() {
        let b = Budget::from_str("10000sat/month").unwrap();
        assert_eq!(b.sat, 10_000);
        assert_eq!(b.period, BudgetRenewal::Monthly);
        for (text, period) in [
            ("1sat/daily", BudgetRenewal::Daily),
            ("1sat/week", BudgetRenewal::Weekly),
            ("1sat/Yearly", BudgetRenewal::Yearly),
            ("1sat/never", BudgetRenewal::Never),
            ("1sat", BudgetRenewal::Never),
        ] {
            assert_eq!(Budget::from_str(text).unwrap().period, period, "{text}");
        }
        assert!(Budget::from_str("10000sat/fortnight").is_err());
        assert!(Budget::from_str("lots/month").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration_secs("12h").unwrap(), 43_200);
        assert_eq!(parse_duration_secs("45m").unwrap(), 2_700);
        assert_eq!(parse_duration_secs("2w").unwrap(), 1_209_600);
        assert_eq!(parse_duration_secs("90").unwrap(), 90);
        assert!(parse_duration_secs("0d").is_err());
        assert!(parse_duration_secs("3 fortnights").is_err());
        assert!(parse_duration_secs("d").is_err());
    }
}
