-- Value segments: lifetime spend and recency per customer, from profiles joined to orders.
SELECT
    c.amperity_id,
    c.email,
    count(t.order_id) AS orders,
    coalesce(sum(t.order_amount), 0)::DECIMAL(18, 2) AS total_spend,
    max(t.order_datetime) AS last_order_at,
    CASE
        WHEN coalesce(sum(t.order_amount), 0) >= 1500 THEN 'high_value'
        WHEN coalesce(sum(t.order_amount), 0) >= 500 THEN 'mid_value'
        ELSE 'low_value'
    END AS segment
FROM customer_360 AS c
LEFT JOIN unified_transactions AS t USING (amperity_id)
GROUP BY c.amperity_id, c.email
