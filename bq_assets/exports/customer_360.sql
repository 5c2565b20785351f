-- Unified customer profiles: one row per Amperity ID. Each run sends the profiles that changed
-- since the last load (the window of updated_at, as bound parameters) and merges them by key.
SELECT
    amperity_id,
    given_name,
    surname,
    email,
    phone,
    address,
    city,
    state,
    postal_code,
    birthdate,
    lifetime_value,
    order_count,
    is_subscribed,
    updated_at
FROM customer_360
WHERE updated_at >= $cursor_start AND updated_at < $cursor_end
