-- Unified customer profiles: one row per Amperity ID.
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
