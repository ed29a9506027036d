//! GitLab's offset pagination of REST lists (`page`, `per_page`), with the
//! headers its clients follow: `X-Page`, `X-Per-Page`, `X-Total`,
//! `X-Total-Pages`, `X-Next-Page`, `X-Prev-Page` and a `Link` header with
//! `first`, `prev`, `next` and `last` (python-gitlab reads `Link`'s `next`
//! to fetch every page, and `X-Total` to warn about a partial list).

use super::ApiError;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// `per_page` when none is given, as GitLab.
pub const DEFAULT_PER_PAGE: i64 = 20;
/// The largest `per_page`; more is served as this many, as GitLab does.
pub const MAX_PER_PAGE: i64 = 100;

/// One requested page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pagination {
    pub page: i64,
    pub per_page: i64,
}

impl Pagination {
    /// From the query's `page` and `per_page`: a page below 1 is a 400;
    /// `per_page` is brought into 1..=100 (GitLab's rule).
    pub fn new(page: Option<i64>, per_page: Option<i64>) -> Result<Pagination, ApiError> {
        let page = page.unwrap_or(1);
        if page < 1 {
            return Err(ApiError::BadRequest("page must be 1 or more".into()));
        }
        let per_page = match per_page {
            None => DEFAULT_PER_PAGE,
            Some(n) if n < 1 => DEFAULT_PER_PAGE,
            Some(n) => n.min(MAX_PER_PAGE),
        };
        Ok(Pagination { page, per_page })
    }

    /// How many rows come before this page.
    pub fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.per_page)
    }

    /// This page of `all`.
    pub fn slice<T>(&self, all: Vec<T>) -> Vec<T> {
        let offset = usize::try_from(self.offset()).unwrap_or(usize::MAX);
        all.into_iter()
            .skip(offset)
            .take(self.per_page as usize)
            .collect()
    }

    /// The JSON array `items` (this page of `total` rows) with GitLab's
    /// pagination headers; links point at `base_url` + `path`, keeping the
    /// request's other query parameters (`query`).
    pub fn respond(
        &self,
        total: i64,
        items: Vec<Value>,
        base_url: &str,
        path: &str,
        query: &[(String, String)],
    ) -> Response {
        let mut headers = HeaderMap::new();
        let total_pages = ((total + self.per_page - 1) / self.per_page).max(1);
        let next = (self.page < total_pages).then_some(self.page + 1);
        let prev = (self.page > 1).then(|| (self.page - 1).min(total_pages));
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        put("x-page", self.page.to_string());
        put("x-per-page", self.per_page.to_string());
        put("x-total", total.to_string());
        put("x-total-pages", total_pages.to_string());
        put(
            "x-next-page",
            next.map(|n| n.to_string()).unwrap_or_default(),
        );
        put(
            "x-prev-page",
            prev.map(|n| n.to_string()).unwrap_or_default(),
        );
        let link = |page: i64, rel: &str| -> Option<String> {
            let mut url = reqwest::Url::parse(base_url.trim_end_matches('/'))
                .and_then(|base| base.join(path))
                .ok()?;
            {
                let mut pairs = url.query_pairs_mut();
                for (key, value) in query {
                    if key != "page" && key != "per_page" {
                        pairs.append_pair(key, value);
                    }
                }
                pairs
                    .append_pair("page", &page.to_string())
                    .append_pair("per_page", &self.per_page.to_string());
            }
            Some(format!("<{url}>; rel=\"{rel}\""))
        };
        let links: Vec<String> = [
            prev.and_then(|p| link(p, "prev")),
            next.and_then(|n| link(n, "next")),
            link(1, "first"),
            link(total_pages, "last"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Ok(value) = HeaderValue::from_str(&links.join(", ")) {
            headers.insert(header::LINK, value);
        }
        (headers, axum::Json(Value::Array(items))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_gitlabs_rules() {
        let p = Pagination::new(None, None).unwrap();
        assert_eq!((p.page, p.per_page, p.offset()), (1, 20, 0));
        let p = Pagination::new(Some(3), Some(500)).unwrap();
        assert_eq!((p.page, p.per_page, p.offset()), (3, 100, 200));
        assert_eq!(Pagination::new(Some(1), Some(0)).unwrap().per_page, 20);
        assert!(Pagination::new(Some(0), None).is_err());
        let p = Pagination::new(Some(2), Some(2)).unwrap();
        assert_eq!(p.slice(vec![1, 2, 3, 4, 5]), vec![3, 4]);
    }

    #[test]
    fn headers_and_links() {
        let p = Pagination::new(Some(2), Some(2)).unwrap();
        let query = vec![
            ("failure_type".to_string(), "sync".to_string()),
            ("page".to_string(), "2".to_string()),
        ];
        let response = p.respond(
            5,
            vec![Value::from(3), Value::from(4)],
            "http://geo.example.com/",
            "/api/v4/geo_nodes/current/failures",
            &query,
        );
        let h = response.headers();
        let get = |name: &str| h.get(name).unwrap().to_str().unwrap().to_string();
        assert_eq!(get("x-total"), "5");
        assert_eq!(get("x-total-pages"), "3");
        assert_eq!(get("x-next-page"), "3");
        assert_eq!(get("x-prev-page"), "1");
        let link = get("link");
        assert!(
            link.contains(
                "<http://geo.example.com/api/v4/geo_nodes/current/failures?failure_type=sync&page=3&per_page=2>; rel=\"next\""
            ),
            "{link}"
        );
        assert!(link.contains("page=1&per_page=2>; rel=\"first\""), "{link}");
        assert!(link.contains("page=3&per_page=2>; rel=\"last\""), "{link}");

        let last =
            Pagination::new(Some(3), Some(2))
                .unwrap()
                .respond(5, vec![], "http://h", "/x", &[]);
        assert_eq!(last.headers().get("x-next-page").unwrap(), "");
        assert!(
            !last
                .headers()
                .get("link")
                .unwrap()
                .to_str()
                .unwrap()
                .contains("rel=\"next\"")
        );
    }
}
