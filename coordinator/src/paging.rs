//! Paging `Builds.List`: newest first, at most a page at a time, resumable before a build.

use manifold_proto::BuildId;

/// The page size when a request asks for none (`limit` 0).
pub const DEFAULT_PAGE: usize = 100;
/// The largest page a request gets, whatever it asks for.
pub const MAX_PAGE: usize = 1000;

/// Which builds a page holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// At most this many (0 means [`DEFAULT_PAGE`]; more than [`MAX_PAGE`] means [`MAX_PAGE`]).
    pub limit: usize,
    /// Only builds submitted before this one (the `next_before` of the previous page).
    pub before: Option<BuildId>,
    /// Only builds created at or after this Unix time in ms.
    pub since_ms: Option<i64>,
}

impl PageQuery {
    /// The newest `limit` builds.
    pub fn newest(limit: usize) -> Self {
        PageQuery {
            limit,
            ..Default::default()
        }
    }

    /// The page size this query gets.
    pub fn size(&self) -> usize {
        match self.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        }
    }
}

/// One page, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The builds of the page.
    pub items: Vec<T>,
    /// Where the next page starts (its `before`), if more builds match.
    pub next_before: Option<BuildId>,
}

/// Why a page cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageError {
    /// `before` names no build the caller sees.
    #[error(
        "`before` build {0} is not a build you can see; pass the `next_before` of an earlier page, or a build id from `manifold builds`"
    )]
    UnknownBefore(BuildId),
}

/// The page of `newest_first` (the builds the caller sees, newest first) that `q` asks for;
/// `key` gives an item's id and creation time (Unix ms).
pub fn page<T>(
    newest_first: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> (BuildId, i64),
    q: &PageQuery,
) -> Result<Page<T>, PageError> {
    let mut items = newest_first.into_iter();
    if let Some(before) = q.before {
        items
            .by_ref()
            .find(|t| key(t).0 == before)
            .ok_or(PageError::UnknownBefore(before))?;
    }
    let size = q.size();
    let mut out: Vec<T> = items
        .filter(|t| q.since_ms.is_none_or(|since| key(t).1 >= since))
        .take(size + 1)
        .collect();
    let next_before = if out.len() > size {
        out.truncate(size);
        out.last().map(|t| key(t).0)
    } else {
        None
    };
    Ok(Page {
        items: out,
        next_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten builds, newest first, created at 10, 9, ... 1.
    fn builds() -> Vec<(BuildId, i64)> {
        let mut v: Vec<_> = (1..=10).map(|t| (BuildId::new(), t)).collect();
        v.reverse();
        v
    }

    fn times(p: &Page<(BuildId, i64)>) -> Vec<i64> {
        p.items.iter().map(|b| b.1).collect()
    }

    #[test]
    fn pages_cover_every_build_once_newest_first() {
        let all = builds();
        let q = |limit, before, since_ms| PageQuery {
            limit,
            before,
            since_ms,
        };
        // (limit, since, expected pages of creation times)
        type Row<'a> = (usize, Option<i64>, &'a [&'a [i64]]);
        let table: &[Row] = &[
            (4, None, &[&[10, 9, 8, 7], &[6, 5, 4, 3], &[2, 1]]),
            (5, None, &[&[10, 9, 8, 7, 6], &[5, 4, 3, 2, 1]]),
            (20, None, &[&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]),
            (0, None, &[&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]),
            (3, Some(5), &[&[10, 9, 8], &[7, 6, 5]]),
            (2, Some(11), &[&[]]),
        ];
        for (limit, since, want) in table {
            let mut before = None;
            let mut got = Vec::new();
            loop {
                let p = page(all.iter().copied(), |b| *b, &q(*limit, before, *since)).unwrap();
                got.push(times(&p));
                match p.next_before {
                    Some(id) => before = Some(id),
                    None => break,
                }
            }
            let want: Vec<Vec<i64>> = want.iter().map(|p| p.to_vec()).collect();
            assert_eq!(got, want, "limit {limit} since {since:?}");
        }
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(PageQuery::newest(0).size(), DEFAULT_PAGE);
        assert_eq!(PageQuery::newest(7).size(), 7);
        assert_eq!(PageQuery::newest(1_000_000).size(), MAX_PAGE);
    }

    #[test]
    fn an_unknown_before_is_refused_by_name() {
        let other = BuildId::new();
        let q = PageQuery {
            before: Some(other),
            ..PageQuery::newest(2)
        };
        let err = page(builds(), |b| *b, &q).unwrap_err();
        assert_eq!(err, PageError::UnknownBefore(other));
        assert!(err.to_string().contains(&other.to_string()), "{err}");
    }
}
